"""SFT end to end with tiny budgets: CLI, checkpoints, exact resume, evaluation of the result."""

from __future__ import annotations

import json

import pytest
import torch

from reinforge.cli import main
from reinforge.config import ConfigError, load_config
from reinforge.data.record import record_demos
from reinforge.envs import EnvConfig
from reinforge.train.checkpoint import save_checkpoint
from reinforge.train.sft import SFTConfig, SFTTrainer, lr_factor

TINY = ["policy.image_size=[32,32]", "policy.d_model=32", "policy.heads=2", "policy.fusion_layers=1",
        "policy.channels=[16,16]", "policy.horizon=4", "policy.execute_steps=4", "batch_size=8", "log_every=5",
        "eval_episodes_per_task=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return record_demos("spatial", tmp_path_factory.mktemp("d") / "ds", per_task=1, image_size=32, tasks=[0, 1])


def test_sft_cli_writes_policy_metrics_and_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sft", "--data", str(data), "--policy", "flow", "--out", str(out), "--steps", "12", "--quiet",
            *TINY, "checkpoint_every=6"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 12 and "eval/spatial/success_rate" in summary
    assert (out / "policy" / "model.safetensors").is_file() and (out / "checkpoints" / "last").is_dir()
    assert any((out / "tb").iterdir()), "tensorboard event files"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "sft/loss" in r] == [5, 10, 12]
    # the trained policy can be evaluated from its folder
    assert main(["eval", "--policy", str(out / "policy"), "--suite", "spatial", "--episodes-per-task", "1",
                 "--image-size", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the same greedy episodes as the run's own final evaluation (1 per task, fixed initial state 0)
    assert r["num_episodes"] == 10 and r["success_rate"] == pytest.approx(summary["eval/spatial/success_rate"])
    assert r["per_task"] == pytest.approx({k.split("/")[-1]: v for k, v in rows[-1].items()
                                           if k.startswith("eval/spatial/spatial_")})


def test_interrupted_run_resumes_exactly(data, tmp_path):
    def cfg(out):
        return load_config(SFTConfig, None, [f"data={data}", f"out={out}", "steps=10", "policy.kind=token",
                                             "checkpoint_every=100", *TINY])

    full = SFTTrainer(cfg(tmp_path / "a"))
    for _ in range(10):
        full.train_step()
    part = SFTTrainer(cfg(tmp_path / "b"))
    for _ in range(4):
        part.train_step()
    save_checkpoint(tmp_path / "b" / "checkpoints" / "last", part.policy, part._state())
    del part  # "killed"
    resumed = SFTTrainer(cfg(tmp_path / "b"))
    assert resumed.step == 4
    while resumed.step < 10:
        resumed.train_step()
    for (k, a), (_, b) in zip(full.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k
    changed = cfg(tmp_path / "b")
    changed.policy.horizon = 8
    changed.policy.execute_steps = 8
    with pytest.raises(ValueError, match="different policy config"):
        SFTTrainer(changed)


def test_schedule_and_config_errors(data):
    o = SFTConfig().optim
    assert lr_factor(0, o, 1000) == pytest.approx(1 / o.warmup_steps)
    assert lr_factor(o.warmup_steps, o, 1000) == pytest.approx(1.0)
    assert lr_factor(1000, o, 1000) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="'optim.lr' must be > 0"):
        load_config(SFTConfig, None, ["optim.lr=0"])
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'"):
        load_config(SFTConfig, None, ["batchsize=3"])
    with pytest.raises(ValueError, match="needs a dataset"):
        SFTTrainer(SFTConfig())
    with pytest.raises(ValueError, match="images are 32x32 but 64x64"):
        SFTTrainer(load_config(SFTConfig, None, [f"data={data}"]))


@pytest.mark.parametrize("name", ["tabletop_sft_token.yaml", "tabletop_sft_flow.yaml"])
def test_shipped_sft_configs_load(name):
    from pathlib import Path

    cfg = load_config(SFTConfig, Path(__file__).parent.parent / "configs" / name, ["data=x"])
    assert cfg.policy.kind in name and cfg.steps > 0


def test_augmentation_shifts_and_jitters_per_sample():
    from reinforge.data.augment import AugmentConfig, augment_images

    img = torch.randint(0, 256, (6, 2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(augment_images(img, AugmentConfig(enabled=False)), img)
    g = torch.Generator().manual_seed(0)
    shifted = augment_images(img, AugmentConfig(shift=2, brightness=0.0, contrast=0.0), g)
    assert shifted.shape == img.shape and shifted.dtype == torch.uint8
    # a pure shift moves pixels: every output row is a (clamped) row of the input
    for n in range(6):
        for v in range(2):
            found = [any(torch.equal(shifted[n, v, :, r, 2:14], img[n, v, :, q, 2 + dx:14 + dx])
                         for q in range(16) for dx in range(-2, 3)) for r in range(2, 14)]
            assert all(found)
    assert not torch.equal(shifted, img)
    jitter = augment_images(img, AugmentConfig(shift=0, brightness=0.3, contrast=0.3), g).float()
    ratio = jitter.mean((2, 3, 4)) / img.float().mean((2, 3, 4))
    assert ratio.std() > 0.01, "brightness differs between samples"


def test_sft_learns_a_task_from_five_demonstrations(tmp_path):
    """Behavioural: a few hundred SFT steps turn a 0% policy into one that solves a task from images."""
    from reinforge.eval import evaluate

    data = record_demos("spatial", tmp_path / "d", per_task=5, tasks=[7])
    cfg = load_config(SFTConfig, None, [f"data={data}", f"out={tmp_path / 'o'}", "steps=400", "resume=false"])
    trainer = SFTTrainer(cfg)
    trainer.policy.eval()
    env = EnvConfig(suite="spatial")
    before = evaluate(lambda e: trainer.policy, env, episodes_per_task=20, tasks=[7]).success_rate
    for _ in range(cfg.steps):
        trainer.train_step()
    trainer.policy.eval()
    after = evaluate(lambda e: trainer.policy, env, episodes_per_task=20, tasks=[7]).success_rate
    assert before == 0.0 and after >= 0.25, (before, after)
