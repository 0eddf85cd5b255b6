"""Fault injection: nothing is lost and every bad input is a clear error.

- the atomic folder swap (datasets, policies, checkpoints): every state a kill can leave is recovered, and a
  real ``reinforge sft`` killed with SIGKILL inside the swap resumes to the same weights as an uninterrupted run;
- ``--overwrite`` / ``out=`` never delete what reinforge did not write;
- divergence never reaches the disk, and a rerun with a lower learning rate resumes from the last good checkpoint;
- a resumed run applies changed settings and says so, or refuses the ones it cannot take;
- corrupt datasets, policies and checkpoints, config abuse and full disks give one ``error:`` line and exit 2.

The kill -9 tests at random points of real ``sft`` / ``train`` / ``demos`` subprocesses are marked ``slow``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reinforge import fsutil
from reinforge.algos.losses import clipped_policy_loss
from reinforge.algos.ppo import gae, normalize_advantages, value_loss
from reinforge.cli import main
from reinforge.data import DemoDataset
from reinforge.data.dataset import DatasetError
from reinforge.data.record import record_demos
from reinforge.envs import make_env
from reinforge.train.checkpoint import DivergedError, save_checkpoint
from reinforge.train.logging import read_metrics
from reinforge.train.sft import SFTConfig, SFTTrainer, lr_factor

TINY = ["policy.image_size=[32,32]", "policy.d_model=32", "policy.heads=2", "policy.fusion_layers=1",
        "policy.channels=[16,16]", "policy.horizon=4", "policy.execute_steps=4", "batch_size=8", "log_every=1",
        "eval_episodes_per_task=1", "num_threads=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return record_demos("spatial", tmp_path_factory.mktemp("d") / "ds", per_task=1, image_size=32, tasks=[0, 1])


@pytest.fixture(scope="module")
def sft_run(data, tmp_path_factory):
    """A finished tiny SFT run (its policy and checkpoint)."""
    from reinforge.config import load_config

    out = tmp_path_factory.mktemp("run") / "sft"
    SFTTrainer(load_config(SFTConfig, None, [f"data={data}", f"out={out}", "steps=2", "policy.kind=flow",
                                             *TINY])).run(progress=False)
    return out


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    return lines[-1]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------------- the atomic folder swap


def _folder(path: Path, tag: str, kind: str = "policy") -> Path:
    tmp = fsutil.begin(path, kind)
    (tmp / "config.json").write_text(json.dumps({"reinforge_policy": {}, "tag": tag}))
    return tmp


def _tag(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["tag"]


@pytest.mark.parametrize("state", ["before_aside", "between_renames", "before_cleanup", "while_writing"])
def test_every_interrupted_swap_is_settled_to_a_complete_folder(tmp_path, state):
    dest = tmp_path / "last"
    fsutil.commit(_folder(dest, "old"), dest, "policy")
    ready, old = dest.with_name("last.tmp-ready"), dest.with_name("last.tmp-old")
    tmp = _folder(dest, "new")
    if state == "while_writing":  # killed while building the new folder: the old one stays
        assert fsutil.settle(dest) == dest and _tag(dest) == "old" and not tmp.exists()
        return
    (tmp / fsutil.MANIFEST).write_text(json.dumps({"kind": "policy", "files": ["config.json"]}))
    os.replace(tmp, ready)  # complete
    if state in ("between_renames", "before_cleanup"):
        os.replace(dest, old)
    if state == "before_cleanup":
        os.replace(ready, dest)
    fsutil.settle(dest)
    assert _tag(dest) == "new"  # the newest complete folder wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_a_legacy_interrupted_swap_rolls_back_to_the_old_folder(tmp_path):
    """Folders of earlier versions: ``X.tmp-old`` (complete) and ``X.tmp-ckpt`` (unknown) with no ``X``."""
    dest = tmp_path / "last"
    for name, tag in (("last.tmp-old", "old"), ("last.tmp-ckpt", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"tag": tag}))
    fsutil.settle(dest)
    assert _tag(dest) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_replacing_refuses_folders_reinforge_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(fsutil.UnsafeWriteError, match="not a reinforge dataset.*thesis.tex"):
        fsutil.begin(mine, "dataset")
    pol = tmp_path / "pol"
    fsutil.commit(_folder(pol, "a"), pol, "policy")
    with pytest.raises(fsutil.UnsafeWriteError, match="holds a reinforge policy, not a dataset"):
        fsutil.begin(pol, "dataset")
    (pol / "notes.txt").write_text("mine")
    with pytest.raises(fsutil.UnsafeWriteError, match="files reinforge did not write.*notes.txt"):
        fsutil.begin(pol, "policy")
    (pol / "notes.txt").unlink()
    fsutil.commit(_folder(pol, "b"), pol, "policy")  # its own folder is replaced
    assert _tag(pol) == "b" and (tmp_path / "mine" / "thesis.tex").is_file()


def test_a_failed_write_leaves_no_temporary_folder_and_the_old_one_intact(tmp_path):
    dest = tmp_path / "p"
    fsutil.commit(_folder(dest, "good"), dest, "policy")
    with pytest.raises(OSError), fsutil.atomic_dir(dest, "policy") as tmp:
        (tmp / "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert _tag(dest) == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    # serialisers' own errors on a full disk become an OSError naming the file
    with pytest.raises(OSError, match="No space left") as e, fsutil.write_guard(tmp_path / "x.pt"):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: No space left")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.pt")


def test_demos_overwrite_never_empties_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("1,2,3")
    rc, err = _cli(capsys, ["demos", "--suite", "spatial", "--out", str(mine), "--overwrite", "--image-size", "16"])
    assert rc == 2 and "not a reinforge dataset" in _one_error_line(err)
    assert (mine / "data.csv").read_text() == "1,2,3" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_run_refuses_to_start_when_it_would_replace_foreign_files(data, tmp_path, capsys):
    out = tmp_path / "o"
    (out / "policy").mkdir(parents=True)
    (out / "policy" / "weights.bin").write_bytes(b"someone else's")
    rc, err = _cli(capsys, ["sft", "--data", str(data), "--out", str(out), "--policy", "flow", *TINY])
    assert rc == 2 and "refusing to replace" in _one_error_line(err) and "weights.bin" in err
    assert not (out / "checkpoints").exists() and (out / "policy" / "weights.bin").is_file()


def test_a_full_disk_is_one_clear_line_and_keeps_the_old_policy(sft_run, tmp_path, capsys, monkeypatch):
    import reinforge.policies.base as base

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    from reinforge.policies import load_pretrained

    policy = load_pretrained(sft_run / "policy")
    dest = tmp_path / "p"
    policy.save_pretrained(dest)
    monkeypatch.setattr(base, "save_file", full)
    with pytest.raises(OSError):
        policy.save_pretrained(dest)
    assert _same_weights(dest, sft_run / "policy") and sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    # through the CLI: one line that says what to do
    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")

    monkeypatch.setattr("reinforge.cli.cmd_envs", disk_full)
    rc, err = _cli(capsys, ["envs"])
    line = _one_error_line(err)
    assert rc == 2 and "/data/run/metrics.jsonl" in line and "disk is full" in line


# --------------------------------------------------------------------------------- divergence and resume


def _sft_cfg(data, out, *extra):
    from reinforge.config import load_config

    return load_config(SFTConfig, None, [f"data={data}", f"out={out}", "policy.kind=flow", *TINY, *extra])


def test_divergence_never_reaches_the_disk_and_a_lower_lr_resumes(data, tmp_path):
    out = tmp_path / "run"
    first = SFTTrainer(_sft_cfg(data, out, "steps=4", "checkpoint_every=2"))
    first.run(progress=False)
    good = _weights(out / "checkpoints" / "last")
    # continue to step 12 with an absurd learning rate: it diverges
    bad = SFTTrainer(_sft_cfg(data, out, "steps=12", "checkpoint_every=1", "optim.lr=1e6", "optim.warmup_steps=0"))
    with pytest.raises(DivergedError, match=r"last good checkpoint .* is kept; rerun with a lower optim.lr"):
        bad.run(progress=False)
    ckpt = out / "checkpoints" / "last"
    saved = _weights(ckpt)
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert bad.saved_step is not None and bad.saved_step >= 4
    if bad.saved_step == 4:
        assert all(torch.equal(saved[k], good[k]) for k in good)
    # the rerun with a sane learning rate resumes from the kept checkpoint and finishes with finite weights
    again = SFTTrainer(_sft_cfg(data, out, "steps=12", "checkpoint_every=1", "optim.lr=1e-4", "optim.warmup_steps=0"))
    assert again.step == bad.saved_step
    assert ("optim.lr", again_from := (1e-3 if bad.saved_step == 4 else 1e6), 1e-4) in again.resume_changes, again_from
    expect = 1e-4 * lr_factor(again.step, again.cfg.optim, 12)
    assert all(g["lr"] == pytest.approx(expect) for g in again.opt.param_groups)
    again.run(progress=False)
    assert again.step == 12 and all(torch.isfinite(v).all() for v in _weights(out / "policy").values())


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_old_one(sft_run, tmp_path):
    from reinforge.policies import load_pretrained

    policy = load_pretrained(sft_run / "policy")
    ckpt = tmp_path / "last"
    save_checkpoint(ckpt, policy, {"kind": "sft", "step": 1})
    with torch.no_grad():
        next(policy.parameters()).fill_(float("nan"))
    with pytest.raises(DivergedError, match="non-finite"):
        save_checkpoint(ckpt, policy, {"kind": "sft", "step": 2})
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        policy.save_pretrained(tmp_path / "p")
    assert torch.load(ckpt / "trainer_state.pt", weights_only=True)["step"] == 1
    assert not (tmp_path / "p").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    state = {"kind": "sft", "step": 3, "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}}
    with pytest.raises(DivergedError, match="optimizer.state.0.exp_avg"):
        save_checkpoint(ckpt, load_pretrained(sft_run / "policy"), state)


def test_a_resume_applies_the_new_optimizer_settings_and_says_so(data, tmp_path):
    out = tmp_path / "run"
    SFTTrainer(_sft_cfg(data, out, "steps=2", "optim.schedule=constant", "optim.warmup_steps=0")).run(progress=False)
    t = SFTTrainer(_sft_cfg(data, out, "steps=4", "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=3e-4",
                            "optim.betas=[0.8,0.9]"))
    changes = {k: (a, b) for k, a, b in t.resume_changes}
    assert changes["optim.lr"] == (1e-3, 3e-4) and changes["steps"] == (2, 4)
    assert changes["optim.betas"] == ([0.9, 0.95], [0.8, 0.9])
    for g in t.opt.param_groups:
        assert g["lr"] == pytest.approx(3e-4) and g["betas"] == (0.8, 0.9)
    t.train_step()
    assert t.sched.get_last_lr()[0] == pytest.approx(3e-4)
    # what a resume cannot take is refused, naming it
    with pytest.raises(ValueError, match="different policy config"):
        SFTTrainer(_sft_cfg(data, out, "steps=4", "policy.d_model=64"))


def test_resumed_sft_drops_the_metric_rows_of_the_lost_future(data, tmp_path):
    out = tmp_path / "run"
    SFTTrainer(_sft_cfg(data, out, "steps=2")).run(progress=False)
    with (out / "metrics.jsonl").open("a") as f:  # a run killed at step 4, before its checkpoint
        for step in (3, 4):
            f.write(json.dumps({"step": step, "sft/loss": 9.0}) + "\n")
        f.write('{"step": 5, "sft/lo')  # and a torn last line
    SFTTrainer(_sft_cfg(data, out, "steps=4")).run(progress=False)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "sft/loss" in r]
    assert steps == [1, 2, 3, 4] and all(r.get("sft/loss") != 9.0 for r in read_metrics(out / "metrics.jsonl"))


def test_train_and_sft_refuse_each_others_run_folders(sft_run, tmp_path, capsys):
    rc, err = _cli(capsys, ["train", "tabletop_grpo_token", f"init={sft_run / 'policy'}", f"out={sft_run}"])
    assert rc == 2 and "holds an SFT run" in _one_error_line(err)
    rc, err = _cli(capsys, ["train", "tabletop_grpo_token", f"init={sft_run / 'policy'}", f"out={sft_run}",
                            "resume=false"])
    assert rc == 2 and "holds an SFT run" in _one_error_line(err)
    assert (sft_run / "checkpoints" / "last" / "trainer_state.pt").is_file()


# --------------------------------------------------------------------------------- corrupt files


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_corrupt_weights_and_trainer_state_are_named(sft_run, data, tmp_path, capsys, damage):
    def spoil(f: Path) -> None:
        raw = f.read_bytes()
        f.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"",
                       "random": random.Random(0).randbytes(4096)}[damage])

    pol = _copy(sft_run / "policy", tmp_path / "pol")
    spoil(pol / "model.safetensors")
    rc, err = _cli(capsys, ["eval", "--policy", str(pol), "--episodes-per-task", "1"])
    line = _one_error_line(err)
    assert rc == 2 and "model.safetensors" in line and "corrupt" in line
    run = _copy(sft_run, tmp_path / "run")
    spoil(run / "checkpoints" / "last" / "trainer_state.pt")
    rc, err = _cli(capsys, ["sft", "--data", str(data), "--out", str(run), "--quiet", "steps=3",
                            "policy.kind=flow", *TINY])
    line = _one_error_line(err)
    assert rc == 2 and "trainer_state.pt" in line and "corrupt" in line
    assert "weights_only" not in err.replace("\n", "")  # never the advice to unpickle it


def test_corrupt_policy_metadata_and_dataset_stats_are_named(sft_run, data, tmp_path, capsys):
    pol = _copy(sft_run / "policy", tmp_path / "pol")
    (pol / "normalization.json").write_text("{not json")
    rc, err = _cli(capsys, ["eval", "--policy", str(pol)])
    assert rc == 2 and "normalization.json is not valid JSON" in _one_error_line(err)
    norm = json.loads((sft_run / "policy" / "normalization.json").read_text())
    norm["action_low"] = norm["action_low"][:3]
    norm["action_high"] = norm["action_high"][:3]
    (pol / "normalization.json").write_text(json.dumps(norm))
    rc, err = _cli(capsys, ["eval", "--policy", str(pol)])
    line = _one_error_line(err)
    assert rc == 2 and "normalization.json does not fit" in line and "config.json" in line
    ds = _copy(Path(data), tmp_path / "ds")
    stats = json.loads((ds / "meta" / "stats.json").read_text())
    stats["action"]["q01"][0] = float("nan")
    (ds / "meta" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(DatasetError, match=r"stats.json: action.q01 holds NaN"):
        DemoDataset.load(ds)


# --------------------------------------------------------------------------------- config abuse


@pytest.mark.parametrize("argv,needle", [
    (["optim=3"], "'optim' is a section"),
    (["augment=3"], "'augment' is a section"),
    (["optim.betas=[0.9]"], "'optim.betas' must be a list of 2 values"),
    (["optim.lr=[1e-4"], "the value is not valid YAML"),
    (["policy=5"], "'policy' is 5, not a section"),
    (["eval_split=heldot"], "'eval_split' must be one of the suite's splits"),
    (["env.suite=spatil"], "unknown suite 'spatil'"),
    (["optim.schedule=linear"], "'optim.schedule' must be one of ['cosine', 'constant']"),
    (["steps=ten"], "'steps' must be an integer"),
])
def test_sft_config_abuse_is_one_clear_line(data, tmp_path, capsys, argv, needle):
    rc, err = _cli(capsys, ["sft", "--data", str(data), "--out", str(tmp_path / "o"), "--policy", "flow", *TINY,
                            *argv])
    assert rc == 2 and needle in _one_error_line(err)
    assert not (tmp_path / "o").exists()  # checked before anything is written


@pytest.mark.parametrize("argv,needle", [
    (["tabletop_sft_flow"], "is an SFT config, not an RL one"),
    (["tabletop_ppo_flow_sde", "rollout=5"], "'rollout' is a section"),
    (["tabletop_ppo_flow_sde", "ppo.clip_low=5"], "'ppo.clip_low' must be in (0, 1)"),
    (["tabletop_ppo_flow_sde", "ppo.clip_low=-1"], "'ppo.clip_low' must be in (0, 1)"),
    (["tabletop_ppo_flow_sde", "algo=sac"], "'algo' must be one of ['grpo', 'ppo']"),
])
def test_train_config_abuse_is_one_clear_line(tmp_path, capsys, argv, needle):
    rc, err = _cli(capsys, ["train", *argv, f"out={tmp_path / 'o'}"])
    assert rc == 2 and needle in _one_error_line(err)


def test_config_files_that_are_not_mappings(data, tmp_path, capsys):
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text("[[steps, 3], [batch_size, 2]]\n")
    for f in (lst, pairs):
        rc, err = _cli(capsys, ["sft", "--config", str(f), "--data", str(data)])
        assert rc == 2 and "must be a mapping of keys" in _one_error_line(err)
    rc, err = _cli(capsys, ["sft", "--config", "tabletop_ppo_flow_sde", "--data", str(data)])
    assert rc == 2 and "is an RL config" in _one_error_line(err)


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--tasks", "a,b", "--episodes-per-task", "1"], "unknown task 'a'"),
    (["eval", "--max-envs", "-1"], "--max-envs must be >= 0"),
    (["eval", "--device", "cuda:7"] if not torch.cuda.is_available() or torch.cuda.device_count() < 8 else
     ["eval", "--device", "tpu"], "device"),
    (["demos", "--per-task", "0", "--out", "x"], "--per-task must be >= 1"),
    (["eval", "--env", "nosuch"], "unknown environment 'nosuch'"),
])
def test_cli_user_errors_are_one_line_exit_2(capsys, argv, needle):
    rc, err = _cli(capsys, argv)
    assert rc == 2 and needle in _one_error_line(err)


def test_verbose_shows_the_traceback(capsys):
    with pytest.raises(ValueError, match="max-envs"):
        main(["-v", "eval", "--max-envs", "-1"])


def test_print_config_and_version(capsys, tmp_path):
    assert main(["train", "tabletop_ppo_flow_sde", "optim.lr=3e-5", "--print-config"]) == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 3e-5 and cfg["algo"] == "ppo" and "clip_low" in cfg["ppo"]
    assert cfg["env"]["name"] == "tabletop" and "final_episodes_per_task" in cfg["eval"]
    assert main(["sft", "--data", "D", "--print-config", "steps=7"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["steps"] == 7 and cfg["data"] == "D" and "warmup_steps" in cfg["optim"]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "reinforge 0." in capsys.readouterr().out


def test_env_step_before_reset_is_a_clear_error():
    env = make_env("tabletop", suite="spatial", num_envs=2, image_size=16)
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(torch.zeros(2, 7))


# --------------------------------------------------------------------------------- masked losses


def test_masked_entries_cannot_poison_the_losses():
    """NaN / inf in entries a mask drops (padding, unexecuted tokens) leave every loss finite and unchanged."""
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    adv = torch.randn(4, 3, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    poison = lambda x: torch.where(mask, x, torch.full_like(x, float("nan")))  # noqa: E731
    for kw in ({}, {"per_trajectory": False}, {"weights": torch.ones(4)}, {"dual_clip": 3.0}):
        clean, _ = clipped_policy_loss(new, old, adv, mask, **kw)
        dirty, m = clipped_policy_loss(poison(new), poison(old), poison(adv), mask, **kw)
        assert torch.isfinite(dirty) and torch.allclose(clean, dirty), kw
        assert all(v == v for v in m.values())
    inf_old = torch.where(mask, old, torch.full_like(old, float("inf")))
    assert torch.allclose(clipped_policy_loss(new, inf_old, adv, mask)[0], clipped_policy_loss(new, old, adv, mask)[0])
    v, ret = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    assert torch.allclose(value_loss(poison(v), poison(v), poison(ret), mask), value_loss(v, v, ret, mask))
    assert torch.allclose(normalize_advantages(poison(adv), mask), normalize_advantages(adv, mask))
    a, _ = gae(poison(adv), torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.bool),
               torch.zeros(4, 3, dtype=torch.bool), valid=mask)
    assert torch.isfinite(a[~mask]).all() and (a[~mask] == 0).all()


# --------------------------------------------------------------------------------- kill -9 of real processes


def _reinforge(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reinforge.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _timed(args: list[str]) -> float:
    """Run ``reinforge args`` to the end; its wall time (the reference for random kill times)."""
    t0 = time.perf_counter()
    _finish(_reinforge(args))
    return time.perf_counter() - t0


def _finish(p: subprocess.Popen, timeout: float = 600) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-2000:]
    return out + err


def _sft_args(data, out, steps=6) -> list[str]:
    return ["sft", "--data", str(data), "--out", str(out), "--policy", "flow", "--quiet", f"steps={steps}",
            "checkpoint_every=2", *TINY]


def test_kill_9_inside_the_checkpoint_swap_loses_nothing(data, tmp_path):
    """A real ``reinforge sft`` is SIGKILLed after it moved ``checkpoints/last`` aside and before the new one
    took its place; the restart finds the complete checkpoint and ends with the uninterrupted run's weights."""
    ref = tmp_path / "ref"
    _finish(_reinforge(_sft_args(data, ref)))
    run, sig = tmp_path / "run", tmp_path / "paused"
    p = _reinforge(_sft_args(data, run), env={fsutil.PAUSE_ENV: str(sig), fsutil.PAUSE_MATCH_ENV: "checkpoints"})
    deadline = time.time() + 300
    while not sig.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert sig.exists(), p.communicate()[1][-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    names = sorted(x.name for x in (run / "checkpoints").iterdir())
    assert names == ["last.tmp-old", "last.tmp-ready"]  # both complete, no `last`: the window of the old bug
    out = _finish(_reinforge(_sft_args(data, run)))
    assert "resuming" in out and "from step 4" in " ".join(out.split())
    assert _same_weights(run / "policy", ref / "policy")
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["last"]
    a = [r for r in read_metrics(ref / "metrics.jsonl") if "sft/loss" in r]
    b = [r for r in read_metrics(run / "metrics.jsonl") if "sft/loss" in r]
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 7))
    assert [r["sft/loss"] for r in b] == pytest.approx([r["sft/loss"] for r in a], abs=1e-6)


def _kill_at_random_and_resume(args: list[str], done: Path, rng: random.Random, kills: int = 3,
                               window: tuple[float, float] = (2.0, 12.0)) -> int:
    """Run ``args``, SIGKILL it at random times up to ``kills`` times, restart each time; returns the kill count."""
    killed = 0
    for _ in range(kills):
        p = _reinforge(args)
        try:
            p.wait(timeout=rng.uniform(*window))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed += 1
            continue
        assert p.returncode == 0, p.communicate()[1][-2000:]
        break
    _finish(_reinforge(args))
    assert done.exists()
    return killed


@pytest.mark.slow
def test_kill_9_at_random_points_of_sft_loses_nothing(data, tmp_path):
    ref = tmp_path / "ref"
    T = _timed(_sft_args(data, ref, steps=40))
    run = tmp_path / "run"
    killed = _kill_at_random_and_resume(_sft_args(data, run, steps=40), run / "policy", random.Random(1), kills=4,
                                        window=(0.1 * T, 0.5 * T))
    assert killed >= 1
    assert _same_weights(run / "policy", ref / "policy")
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "sft/loss" in r]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_kill_9_at_random_points_of_train_loses_nothing(sft_run, tmp_path):
    args = lambda out: ["train", "tabletop_grpo_flow_sde", f"init={sft_run / 'policy'}", f"out={out}",  # noqa: E731
                        "--quiet", "iterations=6", "rollout.num_groups=2", "rollout.group_size=2",
                        "rollout.tasks=[0,1]", "grpo.dynamic_sampling=false", "eval.every=0",
                        "eval.final_episodes_per_task=1", "eval.heldout=false", "eval.videos=0",
                        "eval.tasks=[0,1]", "checkpoint_every=1", "num_threads=1"]
    ref = tmp_path / "ref"
    T = _timed(args(ref))
    run = tmp_path / "run"
    killed = _kill_at_random_and_resume(args(run), run / "report" / "summary.json", random.Random(2), kills=3,
                                        window=(0.1 * T, 0.5 * T))
    assert killed >= 1
    assert _same_weights(run / "policy", ref / "policy")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")  # noqa: E731
                           and k not in ("rollout/env_steps_per_s",)} for r in rows]
    assert strip(read_metrics(run / "metrics.jsonl")) == strip(read_metrics(ref / "metrics.jsonl"))


@pytest.mark.slow
def test_kill_9_at_random_points_of_demos_leaves_a_complete_dataset_or_none(tmp_path):
    out = tmp_path / "ds"
    rng = random.Random(3)
    args = ["demos", "--suite", "spatial", "--per-task", "2", "--out", str(out), "--image-size", "32", "--overwrite"]
    T = _timed(args)
    for _ in range(4):
        p = _reinforge(args)
        try:
            p.wait(timeout=rng.uniform(0.2 * T, 1.1 * T))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        if out.exists():
            ds = DemoDataset.load(out)  # whatever is at --out is a complete dataset
            assert ds.num_episodes == 20
    _finish(_reinforge(args))
    assert DemoDataset.load(out).num_episodes == 20
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ds"]


def test_two_processes_never_train_into_one_folder(data, tmp_path):
    """While a process holds a run folder (here a helper that claims it and sleeps), a second run into it is
    refused before it touches anything; the claim ends with the process, kill -9 included."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"from reinforge import fsutil; import time; "
                               f"fsutil.lock_run({str(out)!r}); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"being written by another reinforge process \(pid {holder.pid}\)"
        with pytest.raises(fsutil.RunInUseError, match=busy):
            SFTTrainer(_sft_cfg(data, out, "steps=2"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t = SFTTrainer(_sft_cfg(data, out, "steps=2"))  # the claim died with its process
    t.run(progress=False)
    SFTTrainer(_sft_cfg(data, out, "steps=3")).run(progress=False)  # and run() gave its own back


def _begin_in_subprocess(dest: Path, then: str = "pass") -> subprocess.Popen:
    """A helper process that begins writing folder ``dest`` (and runs ``then``), says so, and sleeps."""
    code = (f"from pathlib import Path; import os, time; from reinforge import fsutil; "
            f"tmp = fsutil.begin({str(dest)!r}, 'dataset'); (tmp / 'part.bin').write_bytes(b'x'); {then}; "
            f"print('writing', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    return p


@pytest.mark.parametrize("stage", ["writing", "swapping"])
def test_a_folder_being_written_by_a_live_process_is_left_alone(tmp_path, stage):
    """Another process's half-written (or half-swapped) folder is not a leftover: a second writer is refused, a
    reader leaves it alone, and once the writer dies (kill -9) its folder is cleaned up as one."""
    dest = tmp_path / "ds"
    # swapping: the folder is complete (manifest written) and renamed to .tmp-ready, the swap not yet done
    then = ("import json; (tmp / fsutil.MANIFEST).write_text(json.dumps({'kind': 'dataset', 'files': ['part.bin']}))"
            "; os.replace(tmp, tmp.with_name('ds' + fsutil.READY))") if stage == "swapping" else "pass"
    theirs = tmp_path / ("ds" + (fsutil.READY if stage == "swapping" else fsutil.WRITING))
    holder = _begin_in_subprocess(dest, then)
    try:
        with pytest.raises(fsutil.RunInUseError, match="being written by another reinforge process"):
            fsutil.begin(dest, "dataset")
        fsutil.settle(dest)  # what every reader does first
        assert (theirs / "part.bin").is_file() and not dest.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fsutil.settle(dest)  # the writer is dead: a half-written folder goes, a complete one is swapped in
    assert not theirs.exists()
    assert dest.is_dir() == (stage == "swapping")
    with fsutil.atomic_dir(dest, "dataset") as tmp:
        (tmp / "meta").mkdir()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ds"]
    fsutil.settle(dest)
    with fsutil.atomic_dir(dest, "dataset"):  # this process's claim ended with its commit
        pass
