"""Green-VLA's staged pipeline end to end with tiny budgets: R0 -> R1 -> R2 and the baseline from one command,
results per stage, resumable stages, config errors."""

from __future__ import annotations

import json

import pytest

from reinforge.cli import main

TINY = ["image_size=32", "r0_steps=3", "r1_steps=3", "baseline_steps=3", "episodes_per_task=1",
        "demos={franka: 1, scara: 1, widowx: 1}",
        "sft_overrides=[policy.d_model=32,policy.heads=2,policy.fusion_layers=1,'policy.channels=[16,16]',"
        "policy.horizon=4,policy.execute_steps=4,batch_size=8]",
        "rl_overrides=[iterations=1,rollout.num_envs=4,rollout.chunks_per_rollout=2,ppo.minibatch_size=16,"
        "ppo.critic_warmup=0]"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return tmp_path_factory.mktemp("stage_demos")


def test_stages_run_r0_r1_r2_and_the_baseline_then_resume_without_retraining(demos, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["stages", "tabletop_stages_flow", f"out={out}", f"demos_dir={demos}", *TINY, "--quiet"]
    assert main([*base, "stages=[baseline,r0]"]) == 0
    first = json.loads((out / "results.json").read_text())
    assert set(first) == {"baseline", "r0"}
    r0_weights = (out / "r0" / "policy" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*base, "--json"]) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out.strip().splitlines()[-1])
    assert set(results) == {"baseline", "r0", "r1", "r2"}
    assert "r0: done" in captured.err and "baseline: done" in captured.err  # finished stages are skipped
    assert (out / "r0" / "policy" / "model.safetensors").stat().st_mtime_ns == r0_weights
    for stage in results.values():
        assert stage["episodes"] == 10 and 0.0 <= stage["success_rate"] <= 1.0
    r0 = json.loads((out / "r0" / "policy" / "config.json").read_text())["reinforge_policy"]
    assert r0["action_space"] == "unified" and r0["embodiment"] == "widowx"
    assert sorted(r0["embodiments"]) == ["franka", "scara", "widowx"]
    baseline = json.loads((out / "baseline" / "policy" / "config.json").read_text())["reinforge_policy"]
    assert baseline["action_space"] == "native" and baseline["action_dim"] == 5
    # R1 starts from R0's weights: 3 SFT steps leave it near R0, while the baseline (no R0) is far from both
    from safetensors.torch import load_file

    w = {s: load_file(out / s / "policy" / "model.safetensors") for s in ("r0", "r1", "baseline")}
    shared = [k for k in w["r0"] if k in w["baseline"] and w["r0"][k].shape == w["baseline"][k].shape
              and w["r0"][k].is_floating_point() and w["r0"][k].numel() > 1]

    def dist(a, b):
        return sum(float((w[a][k] - w[b][k]).norm()) for k in shared)

    assert len(shared) > 10 and dist("r1", "r0") < 0.2 * dist("baseline", "r0")
    rl = [json.loads(x) for x in (out / "r2" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/policy_loss" in r or "train/loss" in r for r in rl)  # R2 ran its RL update
    assert main([*base, "--quiet"]) == 0
    assert "| R0 -> R1 -> R2 |" in capsys.readouterr().out


@pytest.mark.parametrize("bad, message", [
    ("target=ur5", "must be a registered embodiment"),
    ("stages=[r3]", "must be a subset of"),
    ("demos={franka: 2}", "must include the target embodiment"),
])
def test_stage_config_errors_are_one_line(bad, message, tmp_path, capsys):
    assert main(["stages", f"out={tmp_path}", bad]) == 2
    assert message in capsys.readouterr().err


def test_r1_without_r0_says_what_to_run(demos, tmp_path, capsys):
    assert main(["stages", f"out={tmp_path}", f"demos_dir={demos}", *TINY, "stages=[r1]", "--quiet"]) == 2
    assert "stage r0 has no policy" in capsys.readouterr().err
