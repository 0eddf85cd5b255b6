"""The supervised fine-tuning (behaviour cloning) loop of a VLA policy on demonstrations.

The policy's dims (state, action, camera views) come from the dataset, so any env's demonstrations train a
policy for that env. Samples random frames, targets the next H actions of the same episode (padding past the
episode end is masked out of the loss), augments images, and optimises the policy's ``sft_loss`` with AdamW, a
cosine or constant schedule with warm-up, and gradient clipping. Logs to metrics.jsonl and TensorBoard,
evaluates greedily in the dataset's env (or the ``env`` section's) every ``eval_every`` steps, and keeps an
atomic ``checkpoints/last`` from which an interrupted run resumes exactly (same batches, same weights).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from reinforge.config import check, plain
from reinforge.data import DemoDataset
from reinforge.data.augment import AugmentConfig, augment_images
from reinforge.device import Precision, autocast, check_precision, resolve_device
from reinforge.envs import EnvConfig
from reinforge.policies import Normalizer, Policy, PolicyConfig, make_policy
from reinforge.progress import ProgressBar
from reinforge.train.checkpoint import load_checkpoint, save_checkpoint
from reinforge.train.logging import MetricLogger
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 50
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        check(self.schedule in ("cosine", "constant"), "optim.schedule", self.schedule, "must be cosine|constant")
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0")


@dataclass
class SFTConfig:
    data: str = ""
    out: str = "runs/sft"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    steps: int = 2000
    batch_size: int = 64
    log_every: int = 25
    eval_every: int = 0  # 0 = only at the end
    eval_episodes_per_task: int = 10
    eval_split: str = "train"
    eval_max_envs: int = 500  # envs stepped together in an evaluation (fewer for real simulators)
    # the env SFT evaluates in; name/suite "" = those the dataset was recorded in
    env: EnvConfig = field(default_factory=lambda: EnvConfig(name="", suite=""))
    device: str = "cpu"  # the policy's device: cpu, cuda, cuda:N, auto
    precision: Precision = "fp32"  # bf16 = autocast on CUDA
    checkpoint_every: int = 250
    use_expert_labels: bool = True  # train on the expert's noise-free actions when the dataset has them
    resume: bool = True
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = torch's default

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, "must be >= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        check(self.precision in ("fp32", "bf16"), "precision", self.precision, "must be 'fp32' or 'bf16'")


def lr_factor(step: int, cfg: OptimConfig, total: int) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def sample_batch(ds: DemoDataset, batch_size: int, horizon: int, gen: torch.Generator,
                 augment: AugmentConfig, labels: bool = True) -> dict[str, Any]:
    frames = torch.randint(0, ds.num_frames, (batch_size,), generator=gen)
    actions, is_pad = ds.action_chunk(frames, horizon, labels=labels)
    return {OBS_IMAGE: augment_images(ds.images[frames], augment, gen), OBS_STATE: ds.states[frames],
            OBS_INSTRUCTION: [ds.instruction(int(f)) for f in frames], "actions": actions, "is_pad": is_pad}


class SFTTrainer:
    """Owns the policy, optimizer and schedule; ``run()`` trains to ``cfg.steps`` (resuming if possible)."""

    def __init__(self, cfg: SFTConfig):
        if not cfg.data:
            raise ValueError("SFT needs a dataset: pass --data DIR (record one with `reinforge demos`)")
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        check_precision(cfg.precision, self.device)
        self.ds = DemoDataset.load(cfg.data, expect_image_size=cfg.policy.image_size)
        # the embodiment (action / state dims, cameras) is the data's
        pc = replace(cfg.policy, action_dim=self.ds.action_dim, state_dim=self.ds.state_dim,
                     num_views=self.ds.num_views)
        rec = self.ds.info.get("reinforge", {})
        self.env = None
        if cfg.env.suite or rec.get("suite"):
            self.env = replace(cfg.env, name=cfg.env.name or rec.get("env", "tabletop"),
                               suite=cfg.env.suite or rec.get("suite", ""))
        self.step = 0
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        ckpt = self.out / "checkpoints" / "last"
        if cfg.resume and ckpt.is_dir():
            self.policy, state = load_checkpoint(ckpt, expect=pc)  # a changed policy config is an error
            self.policy.to(self.device)
            self._build_optimizer()
            self._restore(state)
            log.info("resumed from %s at step %d", ckpt, self.step)
        else:
            stats = dict(self.ds.stats)
            if cfg.use_expert_labels and "expert_action" in stats:
                stats["action"] = stats["expert_action"]
            self.policy = make_policy(pc, Normalizer.from_stats(stats))
            self.policy.to(self.device)
            self._build_optimizer()

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, o, self.cfg.steps))

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "config": plain(asdict(self.cfg))}

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])

    def train_step(self) -> dict[str, float]:
        self.policy.train()
        batch = sample_batch(self.ds, self.cfg.batch_size, self.policy.config.horizon, self.gen, self.cfg.augment,
                             self.cfg.use_expert_labels)
        with autocast(self.device, self.cfg.precision):
            loss, metrics = self.policy.sft_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss became {float(loss)} at step {self.step}; lower optim.lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return {**metrics, "sft/grad_norm": float(gn), "sft/lr": self.sched.get_last_lr()[0]}

    def evaluate(self, episodes_per_task: int | None = None) -> dict[str, float]:
        from reinforge.eval import evaluate

        if self.env is None:
            return {}
        self.policy.eval()
        with autocast(self.device, self.cfg.precision):
            res = evaluate(lambda env: self.policy, self.env, split=self.cfg.eval_split,
                           episodes_per_task=episodes_per_task or self.cfg.eval_episodes_per_task,
                           image_size=self.policy.config.image_size, max_envs=self.cfg.eval_max_envs)
        key = f"eval/{self.env.suite}" + ("" if self.cfg.eval_split == "train" else f"_{self.cfg.eval_split}")
        return {f"{key}/success_rate": res.success_rate, f"{key}/mean_length": res.mean_length,
                **{f"{key}/{k}": v for k, v in res.per_task.items()}}

    def run(self, progress: bool = True) -> Policy:
        cfg = self.cfg
        logger = MetricLogger(self.out)
        bar = ProgressBar("sft", cfg.steps, start=self.step, enabled=progress, loss="-")
        t0, acc = time.perf_counter(), []
        try:
            while self.step < cfg.steps:
                m = self.train_step()
                acc.append(m)
                bar.update(self.step, loss=f"{m.get('sft/loss', 0.0):.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    avg = {k: sum(x[k] for x in acc) / len(acc) for k in acc[0]}
                    avg["time/step_s"] = (time.perf_counter() - t0) / len(acc)
                    logger.log(self.step, avg)
                    t0, acc = time.perf_counter(), []
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    logger.log(self.step, self.evaluate())
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    save_checkpoint(self.out / "checkpoints" / "last", self.policy, self._state())
        finally:
            bar.close()
        self.policy.save_pretrained(self.out / "policy")
        final = self.evaluate()
        if final:
            logger.log(self.step, final)
        logger.close()
        return self.policy
