"""Rendering: shapes, what images show, and agreement of the numba and torch backends."""

from __future__ import annotations

import torch

from helpers import action, make_scene
from reinforge.envs import TabletopEnv
from reinforge.envs.tabletop.render import Renderer, build_cameras, build_primitives, render_torch
from reinforge.envs.tabletop.world import step_world


def test_numba_and_torch_backends_agree():
    env = TabletopEnv("long", 4, render=False)
    env.reset([0, 2, 5, 9], [0, 1, 2, 3])
    for _ in range(6):
        env.step(torch.rand(4, 7) * 2 - 1)
    fast = Renderer(40, 48, "numba").render(env.scene, env.state)
    ref = Renderer(40, 48, "torch").render(env.scene, env.state)
    assert fast.shape == ref.shape == (4, 2, 3, 40, 48)
    diff = (fast.int() - ref.int()).abs()
    assert (diff > 3).float().mean() < 0.002, "backends differ on more than 0.2% of pixels"


def test_different_scenes_give_different_images():
    env = TabletopEnv("spatial", 10)
    img = env.reset(torch.arange(10), 0)["image"]
    flat = img.flatten(1).float()
    d = torch.cdist(flat, flat)
    assert (d + torch.eye(10) * 1e9).min() > 0, "every layout renders differently"
    # the same layout at two initial states (small jitter) still differs in the agentview
    env2 = TabletopEnv("spatial", 2)
    img2 = env2.reset([0, 0], [0, 1])["image"]
    assert not torch.equal(img2[0, 0], img2[1, 0])


def test_gripper_motion_and_grasp_are_visible():
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0))], grip=(0.0, 0.0, 0.1))
    r = Renderer(64, 64)
    before = r.render(scene, s)
    moved = step_world(scene, s, action(dx=1.0))
    after = r.render(scene, moved)
    assert (before[0, 0] != after[0, 0]).any(), "agentview shows the gripper move"
    closed = s
    for _ in range(4):
        closed = step_world(scene, closed, action(close=True))
    shut = r.render(scene, closed)
    assert (before[0, 1] != shut[0, 1]).any(), "wrist view shows the fingers close"


def test_object_colour_and_height_change_the_image():
    scene, s = make_scene([("cube", (0.0, 0.05, 0.0))], grip=(0.2, -0.2, 0.3))
    r = Renderer(64, 64, "torch")
    base = r.render(scene, s)
    scene.rgb[0, 0] = torch.tensor([40, 80, 210], dtype=torch.uint8)
    blue = r.render(scene, s)
    assert (base != blue).any()
    red_px = ((base[0, 0, 0].int() - base[0, 0, 2].int()) > 100).sum()
    blue_px = ((blue[0, 0, 2].int() - blue[0, 0, 0].int()) > 100).sum()
    assert red_px > 5 and blue_px > 5
    lifted = s.clone()
    lifted.pos[0, 0, 2] = 0.1
    up = r.render(scene, lifted)
    assert (up != base).any()
    # a lifted object casts a shadow on the table: more pixels of the shaded table colour appear
    shade = torch.tensor([int(196 * 0.62), int(170 * 0.62), int(132 * 0.62)], dtype=torch.uint8)[:, None, None]

    def shadow_px(img):
        return (img[0, 0] == shade).all(0).sum().item()

    assert shadow_px(up) > shadow_px(base) + 5


def test_primitives_and_cameras_layout():
    env = TabletopEnv("goal", 2, render=False)
    env.reset([0, 1])
    p = build_primitives(env.scene, env.state)
    c = build_cameras(env.state)
    assert p.shape == (2, 2 * env.suite.num_objects + 4, 12) and c.shape == (2, 2, 14)
    img = render_torch(p, c, 16, 16)
    assert img.dtype == torch.uint8 and img.shape == (2, 2, 3, 16, 16)
