"""TabletopEnv contract: observations, determinism, batching, episode ends, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reinforge.envs import TabletopEnv, make_env
from reinforge.envs.tabletop.expert import ScriptedExpert
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID


def _rollout(env: TabletopEnv, actions: torch.Tensor, task_ids, init_ids):
    obs = [env.reset(task_ids, init_ids)]
    for a in actions:
        obs.append(env.step(a).obs)
    return obs


def test_observation_contract():
    env = TabletopEnv("goal", 3, image_size=(48, 40))
    obs = env.reset([0, 4, 9], [1, 2, 3])
    assert obs[OBS_IMAGE].shape == (3, 2, 3, 48, 40) and obs[OBS_IMAGE].dtype == torch.uint8
    assert obs[OBS_STATE].shape == (3, 8) and obs[OBS_STATE].dtype == torch.float32
    assert obs[OBS_TASK_ID].tolist() == [0, 4, 9]
    assert obs[OBS_INSTRUCTION][2] == env.suite.tasks[9].instruction
    # LIBERO layout: eef position, axis-angle (pi about a horizontal axis: gripper points down), fingers
    st = obs[OBS_STATE][0]
    assert torch.allclose(st[:3], env.state.grip_pos[0])
    assert abs(st[3:6].norm().item() - np.pi) < 1e-5
    assert st[6].item() == pytest.approx(0.04) and st[7].item() == pytest.approx(-0.04)


def test_snapshot_restore_continues_the_episodes_exactly():
    env = TabletopEnv("goal", 3)
    env.reset([0, 3, 7], [1, 2, 3])
    expert = ScriptedExpert(env)
    for _ in range(30):  # mid-episode: objects moved, something held, drawer maybe open
        env.step(expert.act({}).actions[:, 0])
    snap = env.snapshot()
    other = TabletopEnv("goal", 3)
    obs = other.restore(snap)
    assert torch.equal(obs[OBS_IMAGE], env._observe()[OBS_IMAGE])
    actions = torch.rand(10, 3, 7) * 2 - 1
    for a in actions:
        ra, rb = env.step(a), other.step(a)
        assert torch.equal(ra.obs[OBS_STATE], rb.obs[OBS_STATE]) and torch.equal(ra.terminated, rb.terminated)
        assert torch.equal(ra.truncated, rb.truncated)
    with pytest.raises(ValueError, match="snapshot holds 3 envs"):
        TabletopEnv("goal", 2).restore(snap)


def test_same_seed_and_actions_give_identical_observations():
    actions = torch.rand(25, 4, 7) * 2 - 1
    a = _rollout(TabletopEnv("spatial", 4), actions, [0, 1, 2, 3], [5, 6, 7, 8])
    b = _rollout(TabletopEnv("spatial", 4), actions, [0, 1, 2, 3], [5, 6, 7, 8])
    for oa, ob in zip(a, b):
        assert torch.equal(oa[OBS_IMAGE], ob[OBS_IMAGE]) and torch.equal(oa[OBS_STATE], ob[OBS_STATE])
    # sampled initial states are reproducible from the seed
    e1, e2 = TabletopEnv("object", 6), TabletopEnv("object", 6)
    e1.reset(0, seed=3)
    e2.reset(0, seed=3)
    assert torch.equal(e1.init_id, e2.init_id)


def test_batched_equals_one_by_one():
    env = TabletopEnv("long", 3)
    expert = ScriptedExpert(env, noise=0.3, seed=1)
    obs = env.reset([0, 3, 9], [0, 1, 2])
    steps = [(obs, None)]
    for _ in range(60):
        a = expert.act(obs).actions[:, 0]
        obs = env.step(a).obs
        steps.append((obs, a))
    for b, (task, init) in enumerate([(0, 0), (3, 1), (9, 2)]):
        single = TabletopEnv("long", 1)
        o = single.reset([task], [init])
        assert torch.equal(o[OBS_IMAGE][0], steps[0][0][OBS_IMAGE][b])
        for obs_b, a in steps[1:]:
            o = single.step(a[b:b + 1]).obs
            assert torch.equal(o[OBS_IMAGE][0], obs_b[OBS_IMAGE][b])
            assert torch.equal(o[OBS_STATE][0], obs_b[OBS_STATE][b])


def test_masked_reset_only_touches_masked_envs():
    env = TabletopEnv("spatial", 2, render=False)
    env.reset([0, 1], [0, 0])
    for _ in range(5):
        env.step(torch.tensor([[1.0, 0, 0, 0, 0, 0, -1]] * 2))
    before = env.get_state()
    env.reset([3, 3], [7, 7], mask=torch.tensor([True, False]))
    assert env.task_id.tolist() == [3, 1]
    assert torch.equal(env.state.grip_pos[1], before.grip_pos[1])
    assert env.elapsed.tolist() == [0, 5]


def test_episode_ends_by_success_or_time_limit():
    env = TabletopEnv("spatial", 2, render=False, max_episode_steps=30)
    env.reset([0, 0], [0, 0])
    expert = ScriptedExpert(env)
    zero = torch.zeros(2, 7)
    for _t in range(30):
        a = expert.act().actions[:, 0].clone()
        a[1] = zero[1]  # env 1 does nothing
        res = env.step(a)
    assert res.truncated[1] and not res.terminated[1] and not res.success[1]
    env = TabletopEnv("spatial", 1, render=False)
    env.reset(0, 0)
    expert = ScriptedExpert(env)
    for _t in range(env.max_episode_steps):
        res = env.step(expert.act().actions[:, 0])
        if res.terminated.any():
            break
    assert res.success.item() and res.reward.item() == 1.0 and not res.truncated.item()


def test_step_chunk_masks_steps_after_episode_end():
    env = TabletopEnv("spatial", 2, render=False, max_episode_steps=10)
    env.reset([0, 1], [0, 0])
    res = env.step_chunk(torch.zeros(2, 8, 7))
    assert res.valid[:, :8].all()
    res = env.step_chunk(torch.zeros(2, 8, 7))
    assert res.valid.sum(1).tolist() == [2, 2] and res.truncated.all()
    env.reset([0, 1], [0, 0])
    res = env.step_chunk(torch.zeros(2, 4, 7), active=torch.tensor([True, False]))
    assert res.valid.sum(1).tolist() == [4, 0] and env.elapsed.tolist() == [4, 0]


def test_bad_input_errors():
    env = TabletopEnv("spatial", 2, render=False)
    env.reset([0, 1])
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        env.step(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="NaN or inf.*envs \\[1\\]"):
        env.step(torch.tensor([[0.0] * 7, [float("nan")] + [0.0] * 6]))
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        env.step([[0.0] * 7] * 2)
    with pytest.raises(ValueError, match="task id out of range"):
        env.reset([0, 10])
    with pytest.raises(ValueError, match="init id out of range"):
        env.reset([0, 1], [0, 50])
    with pytest.raises(ValueError, match="unknown suite 'spacial'"):
        TabletopEnv("spacial", 1)
    with pytest.raises(ValueError, match="no held-out split"):
        TabletopEnv("long", 1, split="heldout")
    with pytest.raises(ValueError, match="unknown environment"):
        make_env("libero-typo")
    # out-of-range (finite) actions are clipped to [-1, 1], as in LIBERO
    env.step(torch.full((2, 7), 5.0))
