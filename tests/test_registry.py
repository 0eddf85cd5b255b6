"""The env registry end to end: a third-party env registered through the entry-point group works with every
command (demos, sft, train, eval, bench, suites); env config sections validate the env's own options; nothing
outside ``reinforge.envs`` knows a concrete simulator; device settings fail clearly where they cannot work."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from pathlib import Path

import pytest
import torch

import reinforge.envs.base as base
from reinforge.cli import main
from reinforge.config import ConfigError, load_config
from reinforge.envs import EnvConfig, make_env
from reinforge.rollout import RolloutCollector, RolloutConfig, rollout_env_kwargs

SRC = Path(__file__).resolve().parents[1] / "src" / "reinforge"
TINY_POLICY = ["policy.image_size=[24,24]", "policy.d_model=32", "policy.heads=2", "policy.fusion_layers=1",
               "policy.channels=[16,16]", "policy.horizon=4", "policy.execute_steps=2"]


@pytest.fixture
def point_plugin(monkeypatch):
    """The point env, found the way an installed package's env is: through the entry-point group."""
    monkeypatch.setattr(base, "_ENVS", dict(base._ENVS))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    ep = importlib.metadata.EntryPoint(name="point", value="plugin_env:register", group=base.ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == base.ENTRY_POINT_GROUP else real(**kw))


def test_no_module_outside_envs_imports_a_concrete_simulator():
    offenders = []
    for f in SRC.rglob("*.py"):
        if "envs" in f.relative_to(SRC).parts[:1]:
            continue
        if re.search(r"reinforge\.envs\.(tabletop|libero|metaworld)", f.read_text()):
            offenders.append(str(f.relative_to(SRC)))
    assert not offenders, offenders


def test_a_plugin_env_works_with_every_command(point_plugin, tmp_path, capsys):
    assert "point" in base.registered_envs()
    data, sft, rl = tmp_path / "demos", tmp_path / "sft", tmp_path / "rl"
    assert main(["demos", "--env", "point", "--suite", "reach", "--per-task", "3", "--image-size", "24",
                 "--out", str(data)]) == 0
    info = json.loads((data / "meta" / "info.json").read_text())
    assert info["reinforge"]["env"] == "point" and info["features"]["action"]["names"] == ["vx", "vy"]
    assert list(k for k in info["features"] if k.startswith("observation.images.")) == ["observation.images.top"]
    capsys.readouterr()
    # SFT takes the embodiment (2-dim actions and state, one camera) from the data, and evaluates in its env
    assert main(["sft", "--data", str(data), "--policy", "token", "--out", str(sft), "--steps", "4", "--quiet",
                 *TINY_POLICY, "eval_episodes_per_task=2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval/reach/success_rate" in summary
    policy = json.loads((sft / "policy" / "config.json").read_text())["reinforge_policy"]
    assert (policy["action_dim"], policy["state_dim"], policy["num_views"]) == (2, 2, 1)
    assert main(["train", "tabletop_grpo_token", f"init={sft / 'policy'}", f"out={rl}", "env.name=point",
                 "env.suite=reach", "env.speed=0.2", "iterations=1", "rollout.num_groups=2", "rollout.group_size=2",
                 "grpo.dynamic_sampling=false", "grpo.minibatch_size=16", "eval.final_episodes_per_task=2",
                 "eval.videos=1", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 1 and "eval/reach/success_rate" in summary
    assert list((rl / "report" / "videos").glob("reach_train_task00_*.mp4"))
    out = _json(capsys, ["eval", "--env", "point", "--suite", "reach", "--policy", str(rl / "policy"),
                         "--episodes-per-task", "2", "--json"])
    assert out["env"] == "point" and out["num_episodes"] == 4
    out = _json(capsys, ["eval", "--env", "point", "--policy", "expert", "--suite", "reach", "--image-size", "24",
                         "--episodes-per-task", "5", "--json"])
    assert out["success_rate"] == 1.0, "the plug-in's expert through the generic evaluation"
    out = _json(capsys, ["bench", "env", "--env", "point", "--suite", "reach", "--num-envs", "4", "--steps", "3",
                         "--image-size", "24", "--json"])
    assert out["env"] == "point" and out["steps_per_s"] > 0 and out["views"] == 1
    assert main(["suites", "--env", "point", "--suite", "reach"]) == 0
    assert "move to the blue dot" in capsys.readouterr().out


def _json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_env_sections_validate_the_envs_own_options():
    cfg = EnvConfig.from_mapping({"name": "tabletop", "suite": "goal", "render_backend": "torch"})
    assert cfg.options == {"render": True, "render_backend": "torch", "domain": "sim", "perturb": "",
                           "end_on_success": True, "embodiment": "franka", "step_delay_ms": 0.0}
    assert make_env(cfg, num_envs=1, image_size=16).spec.suite == "goal"
    with pytest.raises(ConfigError, match="env.render_backnd.*did you mean 'render_backend'"):
        EnvConfig.from_mapping({"name": "tabletop", "render_backnd": "torch"})
    with pytest.raises(ConfigError, match="must be auto|numba|torch"):
        EnvConfig.from_mapping({"name": "tabletop", "render_backend": "vulkan"})
    with pytest.raises(ConfigError, match="unknown environment 'mujoco'"):
        EnvConfig.from_mapping({"name": "mujoco"})
    with pytest.raises(ConfigError, match="'env.num_workers' must be an integer"):
        EnvConfig.from_mapping({"name": "libero", "num_workers": "two"})
    with pytest.raises(ConfigError, match="'env' is a section"):
        from reinforge.train.rl import RLConfig

        load_config(RLConfig, None, ["env=libero"])


def test_missing_simulator_names_the_extra(capsys):
    pytest.importorskip("torch")
    try:
        import libero  # noqa: F401
        pytest.skip("LIBERO is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pip install 'reinforge\[libero\]'"):
        make_env(EnvConfig(name="libero", suite="libero_spatial"), num_envs=1).reset(0)
    assert main(["eval", "--env", "libero", "--suite", "libero_spatial", "--policy", "random", "--json"]) == 2
    assert "reinforge[libero]" in capsys.readouterr().err


def test_autoreset_resume_in_an_env_that_cannot_snapshot_drops_the_episodes_in_flight(point_plugin, caplog):
    from reinforge.policies import PolicyConfig, make_policy

    policy = make_policy(PolicyConfig(image_size=(24, 24), action_dim=2, state_dim=2, num_views=1, d_model=32,
                                      heads=2, fusion_layers=1, channels=(16, 16), horizon=2, execute_steps=2))
    cfg = RolloutConfig(mode="autoreset", num_envs=3, chunks_per_rollout=2)
    c = RolloutCollector(make_env("point", suite="reach", **rollout_env_kwargs(cfg, (24, 24), 0)), policy, cfg)
    c.collect()
    state = c.state_dict()
    assert not any(k.startswith("env.") for k in state), "nothing to snapshot"
    fresh = RolloutCollector(make_env("point", suite="reach", **rollout_env_kwargs(cfg, (24, 24), 0)), policy, cfg)
    with caplog.at_level(logging.WARNING):
        fresh.load_state_dict(state)
    assert "cannot snapshot" in caplog.text
    b = fresh.collect()
    assert b.valid.all() and b.num_rows == 3, "the resumed collector starts fresh episodes and carries on"


def test_device_settings_fail_clearly_without_cuda(tmp_path, capsys):
    from reinforge.device import check_precision, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="bf16 is a CUDA option"):
        check_precision("bf16", torch.device("cpu"))
    if torch.cuda.is_available():
        return
    with pytest.raises(ValueError, match="sees no CUDA device"):
        resolve_device("cuda")
    assert main(["train", "tabletop_ppo_flow_sde", "init=x", "device=cuda", f"out={tmp_path}"]) == 2
    assert "device=cuda but this torch build sees no CUDA device" in capsys.readouterr().err


def test_suite_lists_split_over_declared_and_by_name_suites():
    """``--suite a,b`` is several suites when each is known (declared, or runnable by name like object_v1);
    ``all`` is the declared ones only; anything else (a MetaWorld task list) stays one suite."""
    import argparse

    from reinforge.cli import _suites
    from reinforge.envs import known_suites

    def ns(env, suite):
        return argparse.Namespace(env=env, suite=suite)

    assert "object_v1" in known_suites("tabletop") and known_suites("nowhere") == ()
    assert _suites(ns("tabletop", "object_v1,long_v1")) == ["object_v1", "long_v1"]
    assert _suites(ns("tabletop", "spatial, goal")) == ["spatial", "goal"]
    assert _suites(ns("tabletop", "all")) == ["spatial", "object", "goal", "long"]
    assert _suites(ns("metaworld", "reach-v3,push-v3")) == ["reach-v3,push-v3"]
