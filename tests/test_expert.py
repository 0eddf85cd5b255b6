"""The scripted expert solves every task of every suite, earlier versions included (>= 98% per task)."""

from __future__ import annotations

import pytest
import torch

from reinforge.envs import TabletopEnv
from reinforge.envs.tabletop.expert import ScriptedExpert
from reinforge.envs.tabletop.tasks import HELDOUT_SUITES, LEGACY_SUITES, SUITE_NAMES

SPLITS = [(s, "train") for s in SUITE_NAMES + LEGACY_SUITES] + [(s, "heldout") for s in HELDOUT_SUITES]


def expert_success(suite: str, split: str, inits: list[int], noise: float, bank: str = "eval") -> torch.Tensor:
    """(10,) success rate per task over the given initial states."""
    n = len(inits)
    env = TabletopEnv(suite, 10 * n, split=split, render=False, init_bank=bank)
    env.reset(torch.arange(10 * n) // n, torch.tensor(inits * 10))
    expert = ScriptedExpert(env, noise=noise, seed=1)
    done = torch.zeros(env.num_envs, dtype=torch.bool)
    success = torch.zeros_like(done)
    for _ in range(env.max_episode_steps):
        res = env.step(expert.act().actions[:, 0])
        success |= res.success & ~done
        done |= res.terminated | res.truncated
        if done.all():
            break
    return success.view(10, n).float().mean(1)


@pytest.mark.parametrize("suite,split", SPLITS)
def test_expert_fast_subset(suite, split):
    per_task = expert_success(suite, split, [0, 17, 33, 49], noise=0.0)
    assert per_task.min() == 1.0, f"expert failed on tasks {per_task.tolist()}"
    noisy = expert_success(suite, split, [1, 2], noise=0.2, bank="train")
    assert noisy.mean() >= 0.95, f"noisy expert (demo setting) per task {noisy.tolist()}"
    val = expert_success(suite, split, [0, 25], noise=0.0, bank="val")
    assert val.min() == 1.0, f"expert failed on the val bank, tasks {val.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("suite,split", SPLITS)
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_expert_all_initial_states(suite, split, noise):
    per_task = expert_success(suite, split, list(range(50)), noise=noise)
    assert per_task.min() >= 0.98, f"per-task success {per_task.tolist()}"
