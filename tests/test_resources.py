"""Memory checks before a run builds its simulators (``reinforge.resources``, ``EnvMemory`` of each env).

The LIBERO and MetaWorld estimates are importable without their simulators, so these run everywhere; the
budget is stated with ``REINFORGE_MEMORY_GB`` (or ``available=``) rather than read from the machine.
"""

from __future__ import annotations

import re

import pytest
import torch

from reinforge.envs import EnvConfig, make_env
from reinforge.envs.base import env_memory, env_need, envs_that_fit
from reinforge.envs.libero.options import resolve_workers
from reinforge.resources import MEMORY_ENV_VAR, Knob, Need, NotEnoughMemory, available_mb, budget_mb, check_fits

GB = 1024.0


def test_check_fits_names_the_biggest_items_setting_and_a_value_that_fits():
    needs = [Need("policy", 2 * GB), Need("rollout: 40 envs", 0.0, (Knob("rollout.num_envs", 0.5 * GB, 40),)),
             Need("evaluation: 4 envs", 0.0, (Knob("eval.max_envs", 0.5 * GB, 4),))]
    assert check_fits(needs, available=100 * GB) == pytest.approx(24 * GB)
    with pytest.raises(NotEnoughMemory) as e:
        check_fits(needs, "this RL run", available=20 * GB)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("this RL run needs about 24.0 GB")
    fit = int(re.search(r"set rollout\.num_envs=(\d+) or less", msg).group(1))
    # the advised value fits, one more does not
    budget = budget_mb(20 * GB)
    assert 2 * GB + 2 * GB + fit * 0.5 * GB <= budget < 2 * GB + 2 * GB + (fit + 1) * 0.5 * GB


def test_check_fits_moves_to_the_next_knob_and_says_when_none_helps():
    knobs = (Knob("rollout.num_groups", 8 * GB, 4), Knob("rollout envs", 1 * GB, 32, 1, "use at most {fit} envs"))
    with pytest.raises(NotEnoughMemory, match=r"use at most \d+ envs"):
        check_fits([Need("rollout", 1 * GB, knobs)], available=8 * GB)  # not even one group of 8 GB
    with pytest.raises(NotEnoughMemory, match="free memory, or run on a machine with more"):
        check_fits([Need("policy", 30 * GB)], available=16 * GB)


def test_the_stated_budget_wins_and_a_bad_one_is_one_line(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV_VAR, "3.5")
    assert available_mb() == 3.5 * GB
    monkeypatch.setenv(MEMORY_ENV_VAR, "lots")
    with pytest.raises(NotEnoughMemory, match="REINFORGE_MEMORY_GB='lots' is not a number"):
        available_mb()
    monkeypatch.delenv(MEMORY_ENV_VAR)
    assert available_mb() is None or available_mb() > 0


def test_env_estimates_libero_workers_metaworld_and_the_built_in_world():
    lib = env_memory("libero", 512, suite="libero_spatial", num_workers=0)
    workers = resolve_workers(0, 512)
    assert f"in {workers} worker process" in lib.detail and lib.fixed_mb == 1200 * workers
    assert lib.per_env_mb * 512 + lib.fixed_mb > 400 * GB  # the README's old default: ~430 GB
    one = env_memory("libero", 3, suite="libero_spatial", num_workers=8)
    assert one.fixed_mb == 3 * 1200  # never more workers than envs
    assert env_memory("metaworld", 10, suite="pick-place-v3").per_env_mb == 100
    assert env_memory("metaworld", 10, suite="mt10").per_env_mb == 200  # idle task sims kept per slot
    assert env_memory(EnvConfig(suite="spatial"), 500).per_env_mb == 0  # batched tensors: negligible
    need = env_need("libero", 64, "rollout", ("rollout.num_groups", 8), suite="libero_spatial")
    assert need.knobs[0].value == 8 and need.knobs[0].per_unit_mb == 8 * 850


def test_envs_that_fit_shrinks_to_the_budget_and_refuses_when_none_fits(monkeypatch):
    monkeypatch.setenv(MEMORY_ENV_VAR, "20")
    n = envs_that_fit("libero", 500, "evaluation", "--max-envs", suite="libero_spatial")
    m = env_memory("libero", n, suite="libero_spatial")
    assert 1 <= n < 500 and m.fixed_mb + n * m.per_env_mb <= budget_mb()
    assert envs_that_fit("tabletop", 500, "evaluation", "--max-envs", suite="spatial") == 500
    monkeypatch.setenv(MEMORY_ENV_VAR, "2")
    with pytest.raises(NotEnoughMemory, match="evaluation needs about"):
        envs_that_fit("libero", 500, "evaluation", "--max-envs", suite="libero_spatial")


def test_rl_refuses_an_oversized_libero_rollout_before_building_anything(tmp_path, monkeypatch, capsys):
    """The README's old LIBERO command (512 envs by default) stops in one line naming the setting; no LIBERO
    worker is started (LIBERO need not even be installed for the refusal)."""
    from reinforge.cli import main
    from reinforge.policies import PolicyConfig, make_policy

    monkeypatch.setenv(MEMORY_ENV_VAR, "20")
    init = make_policy(PolicyConfig(kind="token", image_size=(32, 32), d_model=32, heads=2, fusion_layers=1,
                                    channels=(16, 16), horizon=4, execute_steps=4)).save_pretrained(tmp_path / "p")
    rc = main(["train", "tabletop_grpo_token", f"init={init}", f"out={tmp_path / 'rl'}", "env.name=libero",
               "env.suite=libero_spatial", "iterations=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "512 libero envs" in err and re.search(r"set rollout\.num_groups=\d+ or less", err)


def test_eval_with_more_envs_than_fit_is_one_line(monkeypatch, capsys):
    from reinforge.cli import main

    monkeypatch.setenv(MEMORY_ENV_VAR, "2")
    rc = main(["eval", "--env", "metaworld", "--suite", "pick-place-v3", "--policy", "random", "--max-envs", "50",
               "--episodes-per-task", "50"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and re.search(r"set --max-envs=\d+ or less", err), err


def test_a_released_collector_builds_its_envs_again_for_the_next_rollout():
    from reinforge.policies import PolicyConfig, make_policy
    from reinforge.rollout import RolloutCollector, RolloutConfig, rollout_env_kwargs

    policy = make_policy(PolicyConfig(kind="token", image_size=(32, 32), d_model=32, heads=2, fusion_layers=1,
                                      channels=(16, 16), horizon=4, execute_steps=4))
    cfg = RolloutConfig(num_groups=1, group_size=2, max_episode_steps=4)
    kw = rollout_env_kwargs(cfg, policy.config.image_size, 0)
    builds = []

    def build():
        builds.append(1)
        return make_env("tabletop", suite="spatial", **kw)

    collector = RolloutCollector(build(), policy, cfg, seed=0, rebuild=build)
    torch.manual_seed(0)
    first = collector.collect()
    assert collector.release_env() and collector._env is None
    second = collector.collect()
    assert len(builds) == 2 and first.reward.shape == second.reward.shape
    auto = RolloutCollector(make_env("tabletop", suite="spatial", **{**kw, "num_envs": 64}), policy,
                            RolloutConfig(mode="autoreset"), rebuild=build)
    assert not auto.release_env(), "auto-reset envs hold running episodes: never released"
