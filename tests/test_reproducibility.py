"""Same command, same number: a whole (tiny) pipeline run twice gives identical numbers, every evaluation path
is seeded, and a run records what it needs to be re-made."""

from __future__ import annotations

import json

import torch

from reinforge.envs import EnvConfig
from reinforge.eval import evaluate
from reinforge.monitor import evaluate_monitored
from reinforge.policies import PolicyConfig, make_policy
from reinforge.train.logging import read_metrics
from reinforge.train.quickstart import QuickstartOptions, run_quickstart

TINY_RL = ["rollout.num_envs=4", "rollout.chunks_per_rollout=2", "ppo.critic_warmup=0", "eval.episodes_per_task=1",
           "eval.heldout=false", "eval.videos=0", "eval.every=1", "eval.tasks=[0,1]"]


def _numbers(out):
    """Every logged number of a run but wall-clock times."""
    rows = read_metrics(out / "rl" / "metrics.jsonl") + read_metrics(out / "sft_1demo" / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/") and "per_s" not in k}
            for r in rows]


def test_a_tiny_pipeline_run_twice_gives_identical_numbers(tmp_path):
    runs = []
    for name in ("a", "b"):
        opts = QuickstartOptions(out=str(tmp_path / name), iterations=2, sft_steps=4, episodes_per_task=2,
                                 seed=3, overrides=TINY_RL)
        res = run_quickstart(opts, say=lambda msg: None)
        runs.append((res, json.loads((res.out / "summary.json").read_text())))
    (a, sa), (b, sb) = runs
    def points(history):  # evaluation points without their wall-clock fields
        return [{k: v for k, v in h.items() if k not in ("eval_s", "train_min")} for h in history]

    assert points(a.history) == points(b.history) and len(a.history) == 3  # before, periodic (val) at 1, after
    assert points(a.rows.values()) == points(b.rows.values())
    assert _numbers(a.out) == _numbers(b.out)
    assert any("train/policy_loss" in r for r in _numbers(a.out)), "the RL update ran"
    # what a re-run needs is recorded: code, software, threads, seed, config
    prov = json.loads((a.out / "rl" / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["threads"] == 2 == torch.get_num_threads()
    assert prov["torch"] == torch.__version__ and prov["config"]["seed"] == 3 and "commit" in prov
    assert sa["provenance"]["seed"] == 3 and sa["bank"] == "eval" and sb["rl"] == sa["rl"]


def _flow_policy():
    torch.manual_seed(0)
    return make_policy(PolicyConfig(kind="flow", image_size=(32, 32), d_model=32, heads=2, fusion_layers=1,
                                    channels=(16, 16), horizon=4, execute_steps=2, num_steps=3))


def test_every_evaluation_path_is_seeded_and_leaves_the_callers_stream_alone():
    policy = _flow_policy().eval()
    env = EnvConfig(suite="spatial", image_size=32)
    draws: dict[int, list[float]] = {}  # per evaluation seed: what the global stream gave at each policy call
    act = policy.act

    def recording_act(obs, **kw):
        draws.setdefault(current[0], []).append(float(torch.rand(())))
        return act(obs, **kw)

    current = [0]
    policy.act = recording_act
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    kw = dict(episodes_per_task=2, tasks=[0, 1], max_episode_steps=12)
    current[0] = 5
    first = evaluate_monitored(policy, env, seed=5, **kw)
    assert torch.equal(torch.rand(3), expected_next), "the caller's random stream is untouched"
    torch.manual_seed(99)  # another caller stream: the seeded evaluation does not depend on it
    again = evaluate_monitored(policy, env, seed=5, **kw)
    assert draws[5][: len(draws[5]) // 2] == draws[5][len(draws[5]) // 2:], "seed 5 twice: the same stream"
    current[0] = 6
    other = evaluate_monitored(policy, env, seed=6, **kw)
    assert draws[5] != draws[6], "the seed sets the stream the policy draws its noise from"
    assert first.episode_length == again.episode_length and first.to_dict() | {"wall_s": 0} == \
        again.to_dict() | {"wall_s": 0}
    assert first.seed == 5 and other.seed == 6 and first.bank == "eval"
    # the plain evaluation: seeded the same way, on the bank it is given
    r1 = evaluate(lambda e: policy, env, episodes_per_task=2, tasks=[0, 1], seed=5, bank="val")
    torch.manual_seed(99)
    r2 = evaluate(lambda e: policy, env, episodes_per_task=2, tasks=[0, 1], seed=5, bank="val")
    assert r1.per_task == r2.per_task and r1.mean_length == r2.mean_length and r1.bank == "val"


def test_a_resumed_run_keeps_its_first_provenance_and_appends_its_own(tmp_path):
    from reinforge.provenance import record_run

    first = record_run(tmp_path, seed=1, config={"lr": 1e-3})
    assert first["seed"] == 1 and first["config"] == {"lr": 1e-3} and "resumes" not in first
    assert first["python"] and first["numpy"] and first["cpu_count"] >= 1
    (tmp_path / "provenance.json").write_text(json.dumps({**first, "commit": "0" * 40}))  # made on older code
    again = record_run(tmp_path, seed=1, config={"lr": 1e-3})
    assert again["commit"] == "0" * 40 and len(again["resumes"]) == 1 and "config" not in again["resumes"][0]
    (tmp_path / "provenance.json").write_text("not json")  # a damaged record is replaced, not fatal
    assert "resumes" not in record_run(tmp_path, seed=2, config={})
