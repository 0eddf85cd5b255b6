"""Physics of the tabletop world on hand-built scenes: grasp, carry, release, support, push, drawer."""

from __future__ import annotations

import torch

from helpers import action, make_scene, move_to
from reinforge.envs.tabletop.catalog import DRAWER_OPEN_THRESHOLD, category
from reinforge.envs.tabletop.predicates import goal_terms_hold
from reinforge.envs.tabletop.tasks import PRED_IN, PRED_ON, PRED_OPEN, PRED_REGION
from reinforge.envs.tabletop.world import drawer_opening, step_world


def _close(scene, state, n=5):
    for _ in range(n):
        state = step_world(scene, state, action(close=True))
    return state


def _open(scene, state, n=5):
    for _ in range(n):
        state = step_world(scene, state, action(close=False))
    return state


def test_grasp_carry_and_release_onto_plate():
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0)), ("plate", (0.15, 0.1, 0.0))])
    s = move_to(scene, s, (0.0, 0.0, 0.025), False, step_world)
    s = _close(scene, s)
    assert s.held.item() == 0
    s = move_to(scene, s, (0.0, 0.0, 0.15), True, step_world)
    assert abs(s.pos[0, 0, 2].item() - (0.15 - 0.025)) < 1e-5, "held cube follows the gripper"
    s = move_to(scene, s, (0.15, 0.1, 0.15), True, step_world)
    s = _open(scene, s)
    assert s.held.item() == -1
    plate_top = category("plate").height
    assert abs(s.pos[0, 0, 2].item() - plate_top) < 1e-5, "released cube rests on the plate top"
    assert s.support[0, 0].item() == 1 and not s.inside[0, 0].item()
    terms = torch.tensor([[[PRED_ON, 0, 1]]])
    assert goal_terms_hold(s, terms, torch.zeros(1, 1, 4)).item()


def test_missed_grasp_holds_nothing():
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0))])
    s = move_to(scene, s, (0.1, 0.1, 0.025), False, step_world)
    s = _close(scene, s)
    assert s.held.item() == -1


def test_release_in_air_falls_to_table_and_into_basket():
    scene, s = make_scene([("mug", (0.0, 0.0, 0.0)), ("basket", (0.15, 0.1, 0.0))])
    s = move_to(scene, s, (0.0, 0.0, 0.04), False, step_world)
    s = _close(scene, s)
    s = move_to(scene, s, (-0.1, -0.1, 0.2), True, step_world)
    s = _open(scene, s)
    assert abs(s.pos[0, 0, 2].item()) < 1e-6 and s.support[0, 0].item() == -1, "falls onto the table"
    s = move_to(scene, s, (-0.1, -0.1, 0.04), False, step_world)
    s = _close(scene, s)
    s = move_to(scene, s, (-0.1, -0.1, 0.2), True, step_world)
    s = move_to(scene, s, (0.15, 0.1, 0.2), True, step_world)
    s = _open(scene, s)
    floor = category("basket").floor
    assert abs(s.pos[0, 0, 2].item() - floor) < 1e-6, "rests on the basket floor"
    assert s.support[0, 0].item() == 1 and s.inside[0, 0].item()
    assert goal_terms_hold(s, torch.tensor([[[PRED_IN, 0, 1]]]), torch.zeros(1, 1, 4)).item()
    assert not goal_terms_hold(s, torch.tensor([[[PRED_ON, 0, 1]]]), torch.zeros(1, 1, 4)).item()


def test_too_big_for_container_rests_on_rim_not_inside():
    scene, s = make_scene([("cheese box", (0.0, 0.0, 0.0)), ("bowl", (0.15, 0.1, 0.0))])
    s = move_to(scene, s, (0.0, 0.0, 0.03), False, step_world)
    s = _close(scene, s)
    s = move_to(scene, s, (0.0, 0.0, 0.2), True, step_world)
    s = move_to(scene, s, (0.15, 0.1, 0.2), True, step_world)
    s = _open(scene, s)
    assert abs(s.pos[0, 0, 2].item() - category("bowl").height) < 1e-6
    assert s.support[0, 0].item() == 1 and not s.inside[0, 0].item()


def test_carried_object_does_not_pass_through_others():
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0)), ("cheese box", (0.15, 0.0, 0.0))])
    s = move_to(scene, s, (0.0, 0.0, 0.025), False, step_world)
    s = _close(scene, s)
    s = move_to(scene, s, (0.0, 0.0, 0.03), True, step_world)
    s = move_to(scene, s, (0.15, 0.0, 0.03), True, step_world)  # try to sweep through at low height
    top = category("cheese box").height
    assert s.pos[0, 0, 2].item() >= top - 1e-6, "carried cube was lifted over the box"


def test_stack_moves_with_its_base():
    scene, s = make_scene([("plate", (0.0, 0.0, 0.0)), ("cube", (0.0, 0.0, 0.012))], support=[-1, 0])
    s = move_to(scene, s, (0.0, 0.0, 0.018), False, step_world)
    s = _close(scene, s)
    assert s.held.item() == 1, "the gripper takes the topmost object in reach"
    scene, s = make_scene([("bowl", (0.0, 0.0, 0.0)), ("cube", (0.0, 0.0, 0.008))], support=[-1, 0])
    s.inside[0, 1] = True
    s = move_to(scene, s, (0.02, 0.0, 0.03), False, step_world)
    s.held[0] = 0  # hold the bowl directly: its content comes along
    s.held_offset[0] = s.pos[0, 0] - s.grip_pos[0]
    s.grip_open[0] = 0.0
    s = move_to(scene, s, (0.12, 0.1, 0.2), True, step_world)
    assert torch.allclose(s.pos[0, 1, :2], s.pos[0, 0, :2]), "the cube inside the bowl moved with it"


def test_closed_gripper_pushes_and_objects_do_not_interpenetrate():
    scene, s = make_scene([("plate", (0.0, 0.1, 0.0)), ("cube", (0.2, -0.15, 0.0))], grip=(0.0, 0.2, 0.15))
    s = _close(scene, s)
    s = move_to(scene, s, (0.0, 0.2, 0.006), True, step_world)
    s = move_to(scene, s, (0.0, -0.05, 0.006), True, step_world)
    assert s.pos[0, 0, 1].item() < -0.05, "the plate was pushed toward the front"
    region = torch.tensor([[[-0.3, 0.3, -0.3, -0.02]]])
    assert goal_terms_hold(s, torch.tensor([[[PRED_REGION, 0, 0]]]), region).item()
    # an open gripper coming straight down around an object does not push it
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0))], grip=(0.0, 0.0, 0.2))
    s = move_to(scene, s, (0.0, 0.0, 0.02), False, step_world)
    assert torch.allclose(s.pos[0, 0], torch.zeros(3))
    # pushing one object into another is blocked
    scene, s = make_scene([("cube", (0.0, 0.0, 0.0)), ("cheese box", (0.0, -0.07, 0.0))], grip=(0.0, 0.08, 0.15))
    s = _close(scene, s)
    s = move_to(scene, s, (0.0, 0.08, 0.02), True, step_world)
    s = move_to(scene, s, (0.0, -0.2, 0.02), True, step_world)
    gap = (s.pos[0, 0, 1] - s.pos[0, 1, 1]).abs().item()
    assert gap >= category("cube").half[1] + category("cheese box").half[1] - 0.005


def test_drawer_opens_by_its_handle_and_carries_its_content():
    scene, s = make_scene([("cabinet", (0.0, 0.15, 0.0)), ("drawer", (0.0, 0.14, 0.015))])
    hy = category("drawer").half[1]
    handle = (0.0, 0.14 - hy - 0.012, 0.015 + 0.5 * category("drawer").height)
    s = move_to(scene, s, (handle[0], handle[1] - 0.05, handle[2]), False, step_world)
    s = move_to(scene, s, handle, False, step_world)
    s = _close(scene, s)
    assert s.held.item() == 1
    for _ in range(10):
        s = step_world(scene, s, action(dy=-1.0, dx=1.0, dz=1.0, close=True))
    assert abs(s.grip_pos[0, 0].item()) < 1e-6, "a held drawer only slides along its rails"
    assert drawer_opening(s)[0, 1].item() >= DRAWER_OPEN_THRESHOLD
    assert goal_terms_hold(s, torch.tensor([[[PRED_OPEN, 1, 0]]]), torch.zeros(1, 1, 4)).item()
    for _ in range(10):
        s = step_world(scene, s, action(dy=-1.0, close=True))
    assert drawer_opening(s)[0, 1].item() <= 0.12 + 1e-6, "the drawer stops at its end"
