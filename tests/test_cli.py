"""The `reinforge` command end to end with tiny budgets: eval (JSON), demos, bench, errors."""

from __future__ import annotations

import json

import pytest

from reinforge.cli import main
from reinforge.envs import EnvConfig
from reinforge.eval import evaluate, load_actor


def _json_out(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_expert_and_random(capsys, tmp_path):
    r = _json_out(capsys, ["eval", "--policy", "expert", "--suite", "goal", "--episodes-per-task", "2", "--json",
                           "--video", str(tmp_path / "v"), "--videos-per-task", "1"])
    assert r["suite"] == "goal" and r["success_rate"] == 1.0 and len(r["per_task"]) == 10
    assert 20 < r["mean_length"] < 100
    assert len(r["videos"]) == 10 and all(p.endswith(".mp4") for p in r["videos"])
    r = _json_out(capsys, ["eval", "--policy", "random", "--suite", "spatial", "--episodes-per-task", "2", "--json"])
    assert r["success_rate"] <= 0.1 and r["mean_length"] == 160
    r = _json_out(capsys, ["eval", "--suite", "long", "--tasks", "0,3", "--episodes-per-task", "2", "--json"])
    assert list(r["per_task"]) == ["long_0", "long_3"] and r["num_episodes"] == 4 and r["success_rate"] == 1.0


def test_eval_heldout_split_runs_the_heldout_tasks():
    res = evaluate(load_actor("expert"), EnvConfig(suite="object"), split="heldout", episodes_per_task=1)
    assert res.split == "heldout" and res.success_rate == 1.0
    assert "blue cube" in res.instructions["object_0"]


def test_demos_command_writes_a_dataset(capsys, tmp_path):
    out = tmp_path / "d"
    assert main(["demos", "--suite", "object", "--per-task", "1", "--out", str(out), "--image-size", "24"]) == 0
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 10 and info["features"]["observation.images.wrist"]["shape"] == [24, 24, 3]


def test_bench_env_prints_one_json_line(capsys):
    r = _json_out(capsys, ["bench", "env", "--num-envs", "8", "--image-size", "16", "--steps", "2", "--json"])
    assert set(r) >= {"steps_per_s", "ms_per_step", "steps_per_s_no_render", "peak_mem_mb"}
    assert r["steps_per_s"] > 0 and r["steps_per_s_no_render"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--policy", "nowhere/ckpt", "--suite", "spatial"], "neither 'expert', 'random'"),
    (["eval", "--suite", "spacial"], "unknown suite 'spacial'"),
    (["eval", "--suite", "long", "--split", "heldout"], "no held-out split"),
    (["demos", "--per-task", "0", "--out", "x"], "--per-task must be >= 1"),
    (["eval", "--env", "mujoco"], "unknown environment 'mujoco'"),
    (["eval", "--env-opt", "render_backnd=torch"], "did you mean 'render_backend'"),
])
def test_cli_errors_are_clear(capsys, argv, msg):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_checkpoint_folder_without_config(tmp_path, capsys):
    assert main(["eval", "--policy", str(tmp_path), "--suite", "spatial"]) == 2
    assert "config.json is missing" in capsys.readouterr().err.replace("\n", "")


def test_quickstart_runs_the_whole_pipeline_on_a_tiny_budget(tmp_path, capsys):
    """demos -> 1-demo SFT -> PPO (the default) -> before/after table; the same command resumes and finishes."""
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--iterations", "1", "--sft-steps", "3", "--sft50-steps", "0",
            "--episodes-per-task", "1", "rollout.num_envs=4", "rollout.chunks_per_rollout=2",
            "ppo.critic_warmup=0", "eval.episodes_per_task=1", "eval.heldout=false", "eval.videos=0"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"sft1", "rl", "minutes", "bank", "episodes_per_task", "iterations", "provenance"}
    assert "eval/spatial/success_rate" in summary["rl"] and "val/spatial/success_rate" in summary["rl"]
    assert summary["bank"] == "eval" and summary["provenance"]["threads"] == 2 and summary["provenance"]["torch"]
    t = summary["minutes"]  # where the time went: the phases add up to the total
    assert t["total"] > 0 and abs(t["demos"] + t["sft"] + t["rl"] - t["total"]) < 0.05
    assert "| spatial |" in (out / "summary.md").read_text()
    assert (out / "demos_1" / "meta" / "info.json").is_file() and (out / "rl" / "report" / "summary.md").is_file()
    printed = capsys.readouterr()
    assert "PPO" in printed.out and "wall-clock minutes: demos" in printed.err.replace("\n", " ")
    # the same folder for a token policy: refused, nothing overwritten
    assert main(["quickstart", "--out", str(out), "--policy", "token", "--algo", "grpo", "--iterations", "1"]) == 2
    assert "holds a flow policy, not a token one" in capsys.readouterr().err


def test_bench_rl_runs_the_trainers_iteration(capsys):
    r = _json_out(capsys, ["bench", "rl", "--policy", "flow", "--algo", "ppo", "--iterations", "1",
                           "--freeze-vision", "on", "--rl-envs", "4", "--json"])
    assert r["envs"] == 4 and r["device"] == "cpu" and r["env"] == "tabletop/spatial"
    assert r["env_steps_per_s"] > 0 and r["samples_per_update"] == 4 * 16, "4 envs x 16 policy calls"


def test_eval_runs_on_the_bank_it_is_given(capsys):
    """`--bank val` starts episodes from the validation bank's states: other scenes than the eval bank's."""
    args = ["eval", "--suite", "spatial", "--episodes-per-task", "1", "--tasks", "0,1", "--image-size", "32", "--json"]
    val = _json_out(capsys, [*args, "--bank", "val"])
    ev = _json_out(capsys, args)
    assert val["bank"] == "val" and ev["bank"] == "eval" and val["seed"] == 0
    assert val["success_rate"] == ev["success_rate"] == 1.0  # the expert solves both
    assert val["per_task_length"] != ev["per_task_length"]  # ... from other initial states
    with pytest.raises(SystemExit):  # argparse names the choices
        main([*args, "--bank", "test"])
