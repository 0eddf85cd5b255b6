"""The supervised fine-tuning (behaviour cloning) loop of a VLA policy on demonstrations.

The policy's dims (state, action, camera views) come from the dataset, so any env's demonstrations train a
policy for that env. Samples random frames, targets the next H actions of the same episode (padding past the
episode end is masked out of the loss), augments images, and optimises the policy's ``sft_loss`` with AdamW, a
cosine or constant schedule with warm-up, and gradient clipping. Logs to metrics.jsonl and TensorBoard,
evaluates greedily in the dataset's env (or the ``env`` section's) every ``eval_every`` steps on the ``val`` bank
of initial states (``eval_bank``; ``val/<suite>/...`` metrics) and at the end on the ``eval`` bank
(``final_eval_bank``; ``eval/<suite>/...``), and keeps an
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

from reinforge import fsutil
from reinforge.config import check, plain
from reinforge.data import DemoDataset
from reinforge.data.augment import AugmentConfig
from reinforge.data.sampler import MixtureSampler
from reinforge.device import Precision, autocast, check_precision, resolve_device
from reinforge.envs import EnvConfig
from reinforge.policies import Normalizer, Policy, PolicyConfig, make_policy
from reinforge.progress import ProgressBar
from reinforge.provenance import record_run
from reinforge.train.checkpoint import (
    DivergedError,
    begin_checkpoint,
    check_run_kind,
    checkpoint_exists,
    commit_checkpoint,
    config_changes,
    load_checkpoint,
    refuse_changes,
)
from reinforge.train.logging import MetricLogger

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
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", list(self.betas),
              "must be two numbers in [0, 1)")
        check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        check(self.schedule in ("cosine", "constant"), "optim.schedule", self.schedule, "must be cosine|constant")
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0")


@dataclass
class SFTConfig:
    # a dataset folder, or several mixed in every batch by data_weights (e.g. sim + real demonstrations)
    data: str | list[str] = ""
    data_weights: tuple[float, ...] = ()  # shares of each batch per dataset (normalised); () = equal
    # a policy folder to start from (e.g. Green-VLA's R1 from the R0 multi-embodiment policy): its architecture,
    # embodiment table and normalisation are kept; "" = a fresh policy from the `policy` section
    init: str = ""
    out: str = "runs/sft"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    steps: int = 2000
    batch_size: int = 64
    log_every: int = 25
    eval_every: int = 0  # 0 = only at the end
    eval_episodes_per_task: int = 10  # 0 = no evaluation at all (e.g. a smoke run of a few steps)
    eval_split: str = "train"
    eval_bank: Literal["val", "eval"] = "val"  # initial states of the periodic evaluations (they steer the run)
    final_eval_bank: Literal["eval", "val"] = "eval"  # ... of the evaluation at the end (the reported number)
    eval_max_envs: int = 0  # envs stepped together in an evaluation; 0 = as many as fit the memory (at most 500)
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
        paths = [self.data] if isinstance(self.data, str) else list(self.data)
        check(all(isinstance(p, str) for p in paths), "data", self.data, "must be a folder or a list of folders")
        check(not self.data_weights or (len(self.data_weights) == len(paths) and min(self.data_weights) >= 0
                                        and sum(self.data_weights) > 0), "data_weights", self.data_weights,
              f"must give one non-negative weight per dataset ({len(paths)}), not all zero")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, "must be >= 0")
        check(self.eval_episodes_per_task >= 0, "eval_episodes_per_task", self.eval_episodes_per_task,
              "must be >= 0 (0 = no evaluation)")
        for name in ("eval_bank", "final_eval_bank"):
            check(getattr(self, name) in ("val", "eval"), name, getattr(self, name),
                  "must be 'val' (tuning) or 'eval' (reported numbers)")
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


class SFTTrainer:
    """Owns the policy, optimizer and schedule; ``run()`` trains to ``cfg.steps`` (resuming if possible)."""

    def __init__(self, cfg: SFTConfig):
        paths = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
        if not paths or not all(paths):
            raise ValueError("SFT needs a dataset: pass --data DIR (record one with `reinforge demos`)")
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        check_precision(cfg.precision, self.device)
        self.datasets = [DemoDataset.load(p, expect_image_size=cfg.policy.image_size) for p in paths]
        self.ds = self.datasets[0]  # the first dataset names the env SFT evaluates in
        pc, self.init_normalizer = self._policy_config()
        if pc.action_space == "unified":  # every dataset in the 64 slots, each frame tagged with its embodiment
            from reinforge.data.unified import to_unified

            self.datasets = [to_unified(d, pc.embodiments) for d in self.datasets]
        self.sampler = MixtureSampler(self.datasets, cfg.data_weights or None)
        rec = self.ds.info.get("reinforge", {})
        self.env = None
        if cfg.env.suite or rec.get("suite"):
            # where the data came from, its world variant included (e.g. the built-in world's real domain)
            variant = rec.get("variant", {}) if not cfg.env.name else {}
            self.env = replace(cfg.env, name=cfg.env.name or rec.get("env", "tabletop"),
                               suite=cfg.env.suite or rec.get("suite", ""),
                               options={**variant, **cfg.env.options})
            self._check_eval_env()
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint on disk
        self.resume_changes: list[tuple[str, object, object]] = []  # settings a resumed run changed
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        ckpt = self.out / "checkpoints" / "last"
        # no second process touches this folder (settles its swaps, trains into it) until run() ends
        fsutil.lock_run(self.out)
        self._locked = True
        try:
            check_run_kind(self.out, "sft")
            # the folders this run will replace must be ours to replace: fail now, not after training
            fsutil.check_replaceable(fsutil.settle(ckpt), "checkpoint", "for out=")
            fsutil.check_replaceable(fsutil.settle(self.out / "policy"), "policy", "for out=")
            if cfg.resume and checkpoint_exists(ckpt):
                self.policy, state = load_checkpoint(ckpt, expect=pc, kind="sft")  # a changed policy is an error
                self.policy.to(self.device)
                self._build_optimizer()
                self._check_resume(state)
                self._restore(state)
                self.saved_step = self.step
                log.info("resumed from %s at step %d", ckpt, self.step)
            else:
                self.policy = self._fresh_policy(pc)
                self.policy.to(self.device)
                self._build_optimizer()
        except BaseException:
            self.close()
            raise

    def _policy_config(self) -> tuple[PolicyConfig, Normalizer | None]:
        """The policy's config: the data's embodiment (action / state dims, cameras) in the ``policy`` section's
        architecture, or ``init``'s architecture, embodiment table and normalisation."""
        from reinforge.data.unified import dataset_embodiment
        from reinforge.envs.embodiment import UNIFIED_DIM
        from reinforge.policies import read_config, read_normalizer

        cfg, ds = self.cfg, self.ds
        names = list(dict.fromkeys(dataset_embodiment(d) for d in self.datasets)) \
            if cfg.policy.action_space == "unified" or cfg.init else []
        if cfg.init:
            pc = read_config(fsutil.settle(cfg.init))
            if pc.action_space == "unified":
                unknown = [n for n in names if n not in pc.embodiments]
                check(not unknown, "data", cfg.data, f"holds embodiments {unknown} that the init policy {cfg.init} "
                      f"does not know (it knows {list(pc.embodiments)})")
                act = cfg.policy.embodiment or names[0]
                return replace(pc, embodiment=act if act in pc.embodiments else pc.embodiment), \
                    read_normalizer(cfg.init)
            pc_data = (ds.action_dim, ds.state_dim, ds.num_views)
            check(pc_data == (pc.action_dim, pc.state_dim, pc.num_views), "init", cfg.init,
                  f"has (action dim, state dim, views) {(pc.action_dim, pc.state_dim, pc.num_views)}, the data "
                  f"{pc_data}: start from a policy of this embodiment")
            return pc, read_normalizer(cfg.init)
        if cfg.policy.action_space == "unified":
            table = tuple(cfg.policy.embodiments) or tuple(names)
            return replace(cfg.policy, action_dim=UNIFIED_DIM, state_dim=UNIFIED_DIM, num_views=ds.num_views,
                           embodiments=table, embodiment=cfg.policy.embodiment or names[0]), None
        return replace(cfg.policy, action_dim=ds.action_dim, state_dim=ds.state_dim, num_views=ds.num_views), None

    def _fresh_policy(self, pc: PolicyConfig) -> Policy:
        """A new policy: ``init``'s weights, or random weights normalised by the data's statistics."""
        if self.cfg.init:
            from reinforge.policies import load_weights

            policy = make_policy(pc, self.init_normalizer)
            load_weights(policy, fsutil.settle(self.cfg.init))
            return policy
        stats = self.sampler.stats()
        if self.cfg.use_expert_labels and "expert_action" in stats:
            stats["action"] = stats["expert_action"]
        return make_policy(pc, Normalizer.from_stats(stats))

    def _check_eval_env(self) -> None:
        """Fail now, not after training, on an eval env, suite or split that does not exist."""
        from reinforge.eval.evaluate import env_spec

        spec = env_spec(self.env, image_size=self.cfg.policy.image_size)
        check(self.cfg.eval_split in spec.splits, "eval_split", self.cfg.eval_split,
              f"must be one of the suite's splits {list(spec.splits)}")

    def _fingerprint(self) -> dict[str, int]:
        return {"episodes": sum(d.num_episodes for d in self.datasets),
                "frames": sum(d.num_frames for d in self.datasets)}

    def _check_resume(self, state: dict[str, Any]) -> None:
        """A resumed run takes the new settings (optimizer, schedule length, batch size, ...) and says which
        changed; it refuses another dataset (the checkpoint's policy config is checked on load)."""
        old = state.get("config", {})
        new = plain(asdict(self.cfg))
        changes = [c for c in config_changes(old, new) if c[0] not in ("resume",)] if old else []
        data = state.get("data")
        if data is not None and data != self._fingerprint():
            now = self._fingerprint()
            raise ValueError(f"{self.out} was trained on data of {data['episodes']} episodes / {data['frames']} "
                             f"frames, {self.cfg.data} has {now['episodes']} / {now['frames']}: choose another "
                             "out=, or resume=false to start over there")
        refuse_changes(changes, ("policy.",), self.out)
        self.resume_changes = changes

    def _build_optimizer(self) -> None:
        o = self.cfg.optim
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, o, self.cfg.steps))

    def _state(self) -> dict[str, Any]:
        return {"kind": "sft", "step": self.step, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "config": plain(asdict(self.cfg)), "data": self._fingerprint()}

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.step = int(state["step"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"{self.out / 'checkpoints' / 'last'} does not fit this run ({type(e).__name__}: {e}); "
                             "choose another out=, or resume=false to start over there") from None
        # the optimizer settings are this config's, not the checkpoint's (the schedule continues at its step)
        o = self.cfg.optim
        for g in self.opt.param_groups:
            g.update(betas=o.betas, weight_decay=o.weight_decay, initial_lr=o.lr)
            g["lr"] = o.lr * lr_factor(self.step, o, self.cfg.steps)
        self.sched.base_lrs = [o.lr] * len(self.opt.param_groups)

    def train_step(self) -> dict[str, float]:
        self.policy.train()
        batch = self.sampler.sample(self.cfg.batch_size, self.policy.config.horizon, self.gen, self.cfg.augment,
                                    self.cfg.use_expert_labels)
        with autocast(self.device, self.cfg.precision):
            loss, metrics = self.policy.sft_loss(batch)
        if not torch.isfinite(loss):
            raise self._diverged(f"the loss became {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip)
        if not torch.isfinite(gn):  # the weights are still those of the last step
            raise self._diverged(f"the gradient norm became {float(gn)}")
        self.opt.step()
        self.sched.step()
        self.step += 1
        return {**metrics, "sft/grad_norm": float(gn), "sft/lr": self.sched.get_last_lr()[0]}

    def _diverged(self, reason: str) -> DivergedError:
        ckpt = self.out / "checkpoints" / "last"
        kept = (f"the last good checkpoint {ckpt} (step {self.saved_step}) is kept; rerun with a lower optim.lr "
                f"(e.g. optim.lr={self.cfg.optim.lr / 10:g}) to resume from it" if self.saved_step is not None else
                f"no checkpoint was written; rerun with a lower optim.lr (e.g. optim.lr={self.cfg.optim.lr / 10:g})")
        return DivergedError(f"SFT diverged at step {self.step + 1}: {reason}. Nothing non-finite was saved: {kept}")

    def _begin_checkpoint(self) -> tuple[Path, dict[str, Any]]:
        """Write the checkpoint of this step into a temporary folder; it replaces ``checkpoints/last`` once the
        next step has shown a finite loss and gradient from these weights (so a resumed run never restarts
        from weights that diverge), or at the end of the run."""
        state = self._state()
        try:
            return begin_checkpoint(self.out / "checkpoints" / "last", self.policy, state), state
        except DivergedError as e:
            raise self._diverged(str(e)) from None

    def _commit_checkpoint(self, tmp: Path, state: dict[str, Any]) -> None:
        commit_checkpoint(tmp, self.out / "checkpoints" / "last", state)
        self.saved_step = int(state["step"])

    def evaluate(self, episodes_per_task: int | None = None, bank: str | None = None) -> dict[str, float]:
        """Greedy success on ``bank``'s initial states (default: the final evaluation's), seeded by ``seed``."""
        from reinforge.eval import evaluate

        if self.env is None or not (episodes_per_task or self.cfg.eval_episodes_per_task):
            return {}
        bank = bank or self.cfg.final_eval_bank
        self.policy.eval()
        with autocast(self.device, self.cfg.precision):
            res = evaluate(lambda env: self.policy, self.env, split=self.cfg.eval_split,
                           episodes_per_task=episodes_per_task or self.cfg.eval_episodes_per_task,
                           image_size=self.policy.config.image_size, max_envs=self.cfg.eval_max_envs,
                           seed=self.cfg.seed, bank=bank, max_envs_setting="eval_max_envs")
        key = f"{bank}/{self.env.suite}" + ("" if self.cfg.eval_split == "train" else f"_{self.cfg.eval_split}")
        return {f"{key}/success_rate": res.success_rate, f"{key}/mean_length": res.mean_length,
                **{f"{key}/{k}": v for k, v in res.per_task.items()}}

    def run(self, progress: bool = True) -> Policy:
        """Train to ``cfg.steps`` (from where a checkpoint left off), save ``out/policy``, evaluate; the run
        folder is released at the end, also on an error."""
        try:
            return self._run(progress)
        finally:
            self.close()

    def _run(self, progress: bool) -> Policy:
        # rows logged after the checkpoint we resumed from belong to a lost future: drop them
        logger = MetricLogger(self.out, keep_until=self.step)
        try:
            return self._train(logger, progress)
        finally:
            logger.close()

    def _train(self, logger: MetricLogger, progress: bool) -> Policy:
        cfg = self.cfg
        record_run(self.out, seed=cfg.seed, config=plain(asdict(cfg)))
        bar = ProgressBar("sft", cfg.steps, start=self.step, enabled=progress, loss="-")
        t0, acc = time.perf_counter(), []
        pending: tuple[Path, dict[str, Any]] | None = None  # a written checkpoint waiting for the next step to succeed
        try:
            while self.step < cfg.steps:
                m = self.train_step()
                if pending is not None:
                    self._commit_checkpoint(*pending)
                    pending = None
                acc.append(m)
                bar.update(self.step, loss=f"{m.get('sft/loss', 0.0):.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    avg = {k: sum(x[k] for x in acc) / len(acc) for k in acc[0]}
                    avg["time/step_s"] = (time.perf_counter() - t0) / len(acc)
                    logger.log(self.step, avg)
                    t0, acc = time.perf_counter(), []
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    logger.log(self.step, self.evaluate(bank=cfg.eval_bank))
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    pending = self._begin_checkpoint()
            if pending is not None:  # the last step: its weights are the result
                self._commit_checkpoint(*pending)
                pending = None
        finally:
            if pending is not None:
                fsutil.abort(pending[0])
            bar.close()
        self.policy.save_pretrained(self.out / "policy")
        final = self.evaluate()
        if final:
            logger.log(self.step, final)
        return self.policy

    def close(self) -> None:
        """Release the run folder (see ``fsutil.lock_run``)."""
        if self._locked:
            self._locked = False
            fsutil.unlock_run(self.out)
