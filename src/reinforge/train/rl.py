"""The online RL loop: collect rollouts, update with GRPO or PPO, evaluate, checkpoint, report.

``reinforge train CONFIG.yaml [dotted.key=value ...]`` builds an ``RLConfig`` and runs ``RLTrainer``:

- each iteration collects a rollout (GRPO: rounds of episodic groups, refilled by dynamic sampling until
  ``rollout.num_groups`` informative groups are in; PPO: one rollout of either mode) and makes one update;
- greedy evaluation on the train tasks and on the held-out split before RL, every ``eval.every`` iterations
  and at the end. The periodic points run on the ``val`` bank of initial states (``eval.bank``; logged as
  ``val/<suite>/...``): they steer a run (curves, early stopping, recipe choices). The points before and after RL
  run ``eval.final_episodes_per_task`` episodes on the ``eval`` bank (``eval.final_bank``; ``eval/<suite>/...``),
  the numbers a run reports, on the same scenes before and after; they also run the ``val`` bank, so its curve
  has both ends. While tuning, ``eval.final_bank=val`` keeps the ``eval`` bank unseen;
- ``checkpoints/last`` (atomic) every ``checkpoint_every`` iterations; a restarted run resumes from it with
  the same optimizer, RNG streams and evaluation history, so its metrics continue exactly;
- metrics.jsonl + TensorBoard (+ W&B with ``wandb: true``), and a ``report/`` folder at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from reinforge import fsutil
from reinforge.algos.base import KLAdaptiveLR, RLOptimConfig, build_optimizer, lr_factor, set_actor_lr
from reinforge.algos.cotrain import CotrainConfig, SFTAnchor
from reinforge.algos.grpo import GRPO, GRPOConfig, dynamic_sampling_keep, flat_groups, trajectory_outcomes
from reinforge.algos.ppo import PPO, PPOConfig
from reinforge.config import check, plain
from reinforge.device import Precision, autocast, check_precision, resolve_device
from reinforge.distributed import DistributedConfig, make_distributed_collector
from reinforge.envs import EnvConfig, make_env
from reinforge.envs.base import env_memory, env_need
from reinforge.policies import load_pretrained
from reinforge.progress import ProgressBar
from reinforge.provenance import record_run
from reinforge.resources import check_fits
from reinforge.rollout import RolloutCollector, RolloutConfig, cat_batches, rollout_env_kwargs, select_rows
from reinforge.train.checkpoint import (
    DivergedError,
    check_run_kind,
    checkpoint_exists,
    config_changes,
    load_checkpoint,
    refuse_changes,
    save_checkpoint,
)
from reinforge.train.logging import MetricLogger
from reinforge.types import RolloutBatch

log = logging.getLogger(__name__)


@dataclass
class RLEvalConfig:
    every: int = 5  # iterations between greedy evaluations; 0 = only before and after
    episodes_per_task: int = 10  # periodic evaluations
    final_episodes_per_task: int = 50  # before RL and after RL
    # initial-state banks (EnvSpec.init_banks): periodic evaluations on ``bank``, before / after on ``final_bank``;
    # metrics are logged under the bank's name (val/<suite>/success_rate, eval/<suite>/success_rate)
    bank: Literal["val", "eval"] = "val"
    final_bank: Literal["eval", "val"] = "eval"
    heldout: bool = True  # also evaluate the held-out split (suites that have one)
    periodic_heldout: bool = True  # ... at the periodic evaluations too (false: only before and after RL)
    videos: int = 3  # rollout videos of the final policy in the report (tasks 0..videos-1)
    tasks: tuple[int, ...] = ()  # evaluate these task ids only (default: every task of the suite)
    # envs stepped together in an evaluation; 0 = as many as fit the memory (at most 500; a LIBERO env ~0.8 GB)
    max_envs: int = 0
    # where the policy is evaluated: name "" = the training env, or, when that is a learned simulator (a world
    # model), the real env it imitates (its spec's ``evaluate_in``); e.g. {name: tabletop, perturb: object_major}
    env: EnvConfig = field(default_factory=lambda: EnvConfig(name=""))

    def __post_init__(self) -> None:
        check(self.every >= 0, "eval.every", self.every, "must be >= 0")
        check(self.episodes_per_task >= 1, "eval.episodes_per_task", self.episodes_per_task, "must be >= 1")
        check(self.final_episodes_per_task >= 1, "eval.final_episodes_per_task", self.final_episodes_per_task,
              "must be >= 1")
        check(self.videos >= 0, "eval.videos", self.videos, "must be >= 0")
        check(self.max_envs >= 0, "eval.max_envs", self.max_envs, "must be >= 0 (0 = as many as fit the memory)")
        for name in ("bank", "final_bank"):
            check(getattr(self, name) in ("val", "eval"), f"eval.{name}", getattr(self, name),
                  "must be 'val' (tuning) or 'eval' (reported numbers)")
        self.tasks = tuple(self.tasks)


@dataclass
class PlateauConfig:
    """Stop before ``iterations`` once a training metric stops rising: after each iteration (from ``2 * window``
    on) the mean of ``metric`` over the last ``window`` iterations is compared with the mean over the ``window``
    before; a gain of at most ``min_gain`` ends the run (its final evaluation, checkpoint and report as usual)."""

    metric: str = ""  # a logged per-iteration metric, e.g. rollout/return (the imagined return); "" = off
    window: int = 25  # iterations per window
    min_gain: float = 0.0  # in the metric's own units

    def __post_init__(self) -> None:
        check(self.window >= 1, "plateau.window", self.window, "must be >= 1")
        check(self.min_gain == self.min_gain and abs(self.min_gain) != float("inf"), "plateau.min_gain",
              self.min_gain, "must be a finite number")

    def reached(self, values: list[float]) -> bool:
        if not self.metric or len(values) < 2 * self.window:
            return False
        w = self.window
        return sum(values[-w:]) / w - sum(values[-2 * w:-w]) / w <= self.min_gain


@dataclass
class RLConfig:
    algo: Literal["grpo", "ppo"] = "grpo"
    init: str = ""  # the SFT policy to start from (a folder written by `reinforge sft`)
    env: EnvConfig = field(default_factory=EnvConfig)  # which env and suite RL trains and evaluates in
    out: str = "runs/rl"
    iterations: int = 40
    freeze_vision: bool = True  # train everything but the vision encoder; rollouts cache its tokens
    freeze_backbone: bool = False  # train the action head (and value head) only, as VLA-RFT
    flow_sampler: str = ""  # flow policies: "sde" (Flow-SDE) or "noise" (Flow-Noise); "" = the checkpoint's
    # Flow-Noise's learned per-step sigma bounds (VLA-RFT: 0.08, 0.2); 0 = the checkpoint's
    flow_noise_min: float = 0.0
    flow_noise_max: float = 0.0
    # Flow-Noise's chain log-likelihood: "mean" of its K + 1 terms (pi_RL), "sum" (VLA-RFT); "" = the checkpoint's
    flow_logprob_reduction: str = ""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    # sim-real co-training (RL-Co): an SFT loss on real demonstrations in every gradient step
    cotrain: CotrainConfig = field(default_factory=CotrainConfig)
    # where rollouts run: in this process (backend: none) or in Ray env / rollout workers (reinforge.distributed)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # stop early once a training metric stops rising (plateau.metric; off by default)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    checkpoint_every: int = 5
    resume: bool = True
    seed: int = 0
    device: str = "cpu"  # the policy's device (cpu, cuda, cuda:N, auto); the env's is env.device
    precision: Precision = "fp32"  # bf16 = autocast on CUDA for rollouts and updates
    num_threads: int = 0  # torch threads; 0 = torch's default
    wandb: bool = False
    wandb_project: str = "reinforge"

    @property
    def suite(self) -> str:
        return self.env.suite

    def __post_init__(self) -> None:
        check(self.algo in ("grpo", "ppo"), "algo", self.algo, "must be 'grpo' or 'ppo'")
        check(bool(self.env.suite), "env.suite", self.env.suite, "must name a suite of the env")
        check(self.precision in ("fp32", "bf16"), "precision", self.precision, "must be 'fp32' or 'bf16'")
        check(self.iterations >= 0, "iterations", self.iterations, "must be >= 0")
        check(self.flow_sampler in ("", "sde", "noise"), "flow_sampler", self.flow_sampler, "must be sde|noise|''")
        check(self.flow_logprob_reduction in ("", "mean", "sum"), "flow_logprob_reduction",
              self.flow_logprob_reduction, "must be mean|sum|'' (the checkpoint's)")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        check(self.flow_noise_min >= 0 and self.flow_noise_max >= 0, "flow_noise_min", (self.flow_noise_min,
              self.flow_noise_max), "must be >= 0 (0 = the checkpoint's)")
        if self.algo == "grpo":
            check(self.rollout.mode == "episodic", "rollout.mode", self.rollout.mode, "must be 'episodic' for GRPO")
            check(self.rollout.group_size >= 2, "rollout.group_size", self.rollout.group_size,
                  "must be >= 2 for GRPO (advantages are normalised within a group)")


def _running_at_end(batch: RolloutBatch) -> int:
    """Env rows of an auto-reset rollout whose last episode had not ended when the rollout stopped."""
    valid = batch.valid
    last = (valid.cumsum(1) == valid.sum(1, keepdim=True)) & valid  # the last valid call of each row
    ended = ((batch.terminated | batch.truncated) & last).any(1)
    return int((valid.any(1) & ~ended).sum())


class RLTrainer:
    """Owns the policy, collector, algorithm and logs; ``run()`` trains to ``cfg.iterations``."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.iteration, self.env_steps, self.train_s = 0, 0, 0.0
        self.history: list[dict[str, float]] = []  # evaluation points
        self.plateau_values: list[float] = []  # plateau.metric per iteration (kept in the checkpoint)
        self.stopped_at: int | None = None  # the iteration a plateau stopped the run at
        self.device = resolve_device(cfg.device)
        check_precision(cfg.precision, self.device)
        ckpt = self.out / "checkpoints" / "last"
        self.saved_iteration: int | None = None  # the iteration of the last checkpoint on disk
        self.resume_changes: list[tuple[str, object, object]] = []  # settings a resumed run changed
        if not cfg.init and not (cfg.resume and any(ckpt.parent.glob("last*"))):
            raise ValueError("RL starts from a fine-tuned policy: set init=PATH (a folder written by "
                             "`reinforge sft`, e.g. runs/sft/policy)")
        # no second process touches this folder (settles its swaps, trains into it) until close()
        fsutil.lock_run(self.out)
        self._locked = True
        try:
            self._setup(ckpt)
        except BaseException:
            self.close()
            raise

    def _setup(self, ckpt: Path) -> None:
        cfg, state = self.cfg, None
        check_run_kind(self.out, "rl")
        # the folders this run will replace must be ours to replace: fail now, not after training
        for folder, kind in ((ckpt, "checkpoint"), (self.out / "policy", "policy")):
            fsutil.check_replaceable(fsutil.settle(folder), kind, "for out=")
        if cfg.resume and checkpoint_exists(ckpt):
            self.policy, state = load_checkpoint(ckpt, kind="rl")
            self._check_resume(state)
            log.info("resuming %s from iteration %d", ckpt, int(state["iteration"]))
        else:
            if not cfg.init:
                raise ValueError("RL starts from a fine-tuned policy: set init=PATH (a folder written by "
                                 "`reinforge sft`, e.g. runs/sft/policy)")
            self.policy = load_pretrained(cfg.init)
            change = {k: v for k, v in (("flow_sampler", cfg.flow_sampler), ("noise_min", cfg.flow_noise_min),
                                        ("noise_max", cfg.flow_noise_max),
                                        ("logprob_reduction", cfg.flow_logprob_reduction)) if v}
            if change:
                self.policy.config = replace(self.policy.config, **change)
        if not self.policy.stochastic:
            raise ValueError(f"{cfg.init or 'the checkpoint'}: {self.policy._deterministic}")
        self.policy.to(self.device)
        opt = build_optimizer(self.policy, cfg.optim, freeze_vision=cfg.freeze_vision, train_critic=cfg.algo == "ppo",
                              freeze_backbone=cfg.freeze_backbone)
        if cfg.algo == "grpo":
            self.algo = GRPO(self.policy, opt, cfg.grpo, grad_clip=cfg.optim.grad_clip, seed=cfg.seed)
        else:
            self.algo = PPO(self.policy, opt, cfg.ppo, grad_clip=cfg.optim.grad_clip, seed=cfg.seed)
        self.algo.adaptive_lr = KLAdaptiveLR.from_config(cfg.optim)
        self.optimizer = opt
        self.cotrain_env: tuple[str, EnvConfig] | None = None
        if cfg.cotrain.enabled:
            self.algo.anchor = SFTAnchor(self.policy, cfg.cotrain, seed=cfg.seed)
        limit = None
        if cfg.rollout.time_limit_scale < 1 and not cfg.rollout.max_episode_steps:
            from reinforge.eval.evaluate import env_spec

            limit = env_spec(cfg.env, image_size=self.policy.config.image_size).max_episode_steps
        env_kwargs = rollout_env_kwargs(cfg.rollout, self.policy.config.image_size, cfg.seed, limit)
        collector_kw = {"cache_features": (cfg.freeze_vision or cfg.freeze_backbone) and self.policy.feature_cache,
                        "cache_prefix": cfg.freeze_backbone and self.policy.cacheable_prefix,
                        "need_values": cfg.algo == "ppo", "logprob": self.algo.logprob}
        self.release_for_eval = False  # set by the memory check (in-process rollouts)
        if cfg.distributed.enabled:
            trained = [p for g in opt.param_groups for p in g["params"]]
            self.collector = make_distributed_collector(cfg.distributed, env=cfg.env, env_kwargs=env_kwargs,
                                                        policy=self.policy, rollout=cfg.rollout, trained=trained,
                                                        seed=cfg.seed, **collector_kw)
        else:
            self.release_for_eval = self._check_memory(env_kwargs)
            self.collector = RolloutCollector(make_env(cfg.env, **env_kwargs), self.policy, cfg.rollout,
                                              seed=cfg.seed, rebuild=lambda: make_env(cfg.env, **env_kwargs),
                                              **collector_kw)
        self.eval_env, self.eval_spec = self._eval_env(self.collector.env.spec)
        if self.algo.anchor is not None:
            self.cotrain_env = self._cotrain_env(self.algo.anchor.ds)
        if state is not None:
            self._restore(state)

    def _check_memory(self, env_kwargs: dict[str, Any]) -> bool:
        """Stop with one line when the rollout envs (and an evaluation's) would not fit the memory available; True
        when the rollout envs are let go during evaluations (episodic rollouts of envs that hold a simulator
        process each, e.g. LIBERO: both at once need not fit, and evaluations get the memory)."""
        c = self.cfg
        kw = {k: v for k, v in env_kwargs.items() if k != "num_envs"}
        n = c.rollout.envs
        if c.rollout.mode == "episodic":
            rollout = env_need(c.env, n, "rollout", ("rollout.num_groups", c.rollout.group_size),
                               ("rollout.num_groups x rollout.group_size", 1, 1,
                                "use at most {fit} rollout envs (rollout.num_groups x rollout.group_size), e.g. "
                                "rollout.num_groups=1 rollout.group_size={fit}"), **kw)
        else:
            rollout = env_need(c.env, n, "rollout", ("rollout.num_envs", 1), **kw)
        release = c.rollout.mode == "episodic" and env_memory(c.env, n, **kw).fixed_mb > 0
        needs = [rollout]
        if not release:  # an evaluation builds its envs while these are held: room for at least one (or max_envs)
            needs.append(env_need(c.eval.env if c.eval.env.name else c.env, c.eval.max_envs or 1, "evaluation",
                                  ("eval.max_envs", 1), image_size=kw["image_size"]))
        check_fits(needs, "this RL run")
        if release:
            log.info("the rollout envs are closed during evaluations (built again for the next rollout)")
        return release

    # ------------------------------------------------------------ state

    # settings a resumed run cannot change: what is learned where, and the shape of the optimizer / rollouts
    RESUME_FIXED = ("algo", "env.name", "env.suite", "freeze_vision", "freeze_backbone", "rollout.mode",
                    "rollout.num_envs", "flow_sampler", "flow_noise_min", "flow_noise_max", "flow_logprob_reduction",
                    "distributed.rollout_workers")  # rollout workers keep their own generators
    # ... and, for auto-reset runs whose envs keep running across the checkpoint, where those envs live
    RESUME_FIXED_AUTORESET = ("distributed.backend", "distributed.env_workers", "distributed.placement",
                              "rollout.pipeline_stages")

    def _check_resume(self, state: dict[str, Any]) -> None:
        old = dict(state.get("config", {}))
        if "env" not in old and "suite" in old:  # runs written before the env section existed
            old["env"] = {"name": "tabletop", "suite": old.pop("suite")}
        if old:  # runs written before Ray scale-out ran in process, one pipeline stage
            old.setdefault("distributed", plain(asdict(DistributedConfig())))
            if isinstance(old.get("rollout"), dict):
                old["rollout"] = {"pipeline_stages": 1, **old["rollout"]}
        new = plain(asdict(self.cfg))
        changes = [c for c in config_changes(old, new) if c[0] not in ("resume", "init")] if old else []
        fixed = self.RESUME_FIXED + self.RESUME_FIXED_AUTORESET if self.cfg.rollout.mode == "autoreset" else tuple(
            k for k in self.RESUME_FIXED if k != "rollout.num_envs")
        refuse_changes(changes, fixed, self.out)
        self.resume_changes = changes

    def _state(self) -> dict[str, Any]:
        return {"kind": "rl", "iteration": self.iteration, "env_steps": self.env_steps, "train_s": self.train_s,
                "optimizer": self.optimizer.state_dict(), "algo": self.algo.state_dict(),
                "collector": self.collector.state_dict(), "torch_rng": torch.get_rng_state(),
                "history": self.history, "config": plain(asdict(self.cfg)),
                "plateau": {"metric": self.cfg.plateau.metric, "values": self.plateau_values,
                            "stopped_at": self.stopped_at}}

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
            self.train_s = float(state["train_s"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.algo.load_state_dict(state["algo"])
            self.collector.load_state_dict(state["collector"])
            torch.set_rng_state(state["torch_rng"])
            self.history = list(state["history"])
            plateau = state.get("plateau") or {}
            if plateau.get("metric") == self.cfg.plateau.metric:  # another metric starts its record afresh
                self.plateau_values = [float(v) for v in plateau.get("values", [])]
                self.stopped_at = plateau.get("stopped_at")
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"{self.out / 'checkpoints' / 'last'} does not fit this run ({type(e).__name__}: {e}); "
                             "choose another out=, or resume=false to start over there") from None
        self.saved_iteration = self.iteration
        # the optimizer settings are this config's, not the checkpoint's (the actor lr is set every iteration)
        o = self.cfg.optim
        for g in self.optimizer.param_groups:
            g.update(betas=o.betas, weight_decay=o.weight_decay)
            if g.get("name") == "critic":
                g["lr"] = o.critic_lr

    def _diverged(self, reason: str) -> DivergedError:
        ckpt = self.out / "checkpoints" / "last"
        lr = self.cfg.optim.lr
        kept = (f"the last good checkpoint {ckpt} (iteration {self.saved_iteration}) is kept; rerun with a lower "
                f"optim.lr (e.g. optim.lr={lr / 10:g}) to resume from it" if self.saved_iteration is not None
                else f"no checkpoint was written; rerun with a lower optim.lr (e.g. optim.lr={lr / 10:g})")
        return DivergedError(f"RL diverged at iteration {self.iteration + 1}: {reason}. Nothing non-finite was "
                             f"saved: {kept}")

    def save(self) -> None:
        """Write ``checkpoints/last`` (never with non-finite weights or optimizer state)."""
        try:
            save_checkpoint(self.out / "checkpoints" / "last", self.policy, self._state())
        except DivergedError as e:
            raise self._diverged(str(e)) from None
        self.saved_iteration = self.iteration

    # ------------------------------------------------------------ one iteration

    def collect(self) -> tuple[RolloutBatch | None, dict[str, float]]:
        """GRPO: rounds of groups until ``num_groups`` informative groups (dynamic sampling); PPO: one rollout."""
        c = self.cfg
        if c.algo == "ppo":
            b = self.collector.collect()
            return b, self._rollout_metrics([b], b)
        G, want = c.rollout.group_size, c.rollout.num_groups
        rounds, kept, n_kept = [], [], 0
        for _ in range(c.grpo.max_rounds):
            b = self.collector.collect()
            rounds.append(b)
            # a group with an episode lost to a simulator fault is dropped: its advantages would be biased
            keep = ~b.episode_failed.view(-1, G).any(1) if b.episode_failed is not None else torch.ones(
                b.num_rows // G, dtype=torch.bool)
            if c.grpo.dynamic_sampling:  # binary success: a mixed group; returns: a group with any spread
                outcome = trajectory_outcomes(b, c.grpo.reward).view(-1, G)
                keep &= dynamic_sampling_keep(outcome) if c.grpo.reward == "success" else ~flat_groups(outcome)
            if not bool(keep.all()):
                b = select_rows(b, keep.repeat_interleave(G))
            if b.num_rows:
                kept.append(b)
                n_kept += b.num_rows // G
            if n_kept >= want:
                break
        batch = cat_batches(kept) if kept else None
        if batch is not None and n_kept > want:
            batch = select_rows(batch, torch.arange(batch.num_rows) < want * G)
        m = self._rollout_metrics(rounds, batch)
        m["rollout/rounds"] = float(len(rounds))
        m["rollout/kept_groups"] = float(n_kept)
        return batch, m

    def _rollout_metrics(self, rounds: list[RolloutBatch], batch: RolloutBatch | None) -> dict[str, float]:
        succ = torch.cat([b.episode_success for b in rounds]).float()
        length = torch.cat([b.episode_length for b in rounds]).float()
        steps = sum(int(b.env_steps.sum()) for b in rounds)
        self.env_steps += steps
        t_env = sum(b.timing["time/env_s"] for b in rounds)
        t_pol = sum(b.timing["time/policy_s"] for b in rounds)
        failed = sum(int(b.episode_failed.sum()) + b.lost_episodes for b in rounds if b.episode_failed is not None)
        m = {"rollout/success_rate": float(succ.mean()) if succ.numel() else 0.0,
             "rollout/failed_episodes": float(failed),
             "rollout/episodes": float(succ.numel()),
             "rollout/episode_length": float(length.mean()) if length.numel() else 0.0,
             "rollout/env_steps": float(steps), "time/env_s": t_env, "time/policy_s": t_pol,
             "rollout/env_steps_per_s": steps / max(t_env + t_pol, 1e-9)}
        if self.cfg.rollout.mode == "autoreset":
            # the finished episodes are biased to successes (a success ends an episode early): success_rate counts
            # the episodes still running at the rollout's end as not (yet) successful; finished_success_rate is
            # over the finished ones only
            running = sum(_running_at_end(b) for b in rounds)
            m["rollout/finished_success_rate"] = m["rollout/success_rate"]
            m["rollout/running_episodes"] = float(running)
            m["rollout/success_rate"] = float(succ.sum()) / max(succ.numel() + running, 1)
        ret = torch.cat([torch.where(b.valid, b.reward, 0.0).sum(1) for b in rounds])
        m["rollout/return"] = float(ret.mean()) if ret.numel() else 0.0  # per env row (one episode when episodic)
        if batch is not None:
            m["rollout/samples"] = float(batch.num_samples)
        m.update(self.collector.metrics())
        if self.cfg.rollout.task_assignment == "adaptive":
            w = self.collector.task_weights()
            m["rollout/task_weight_ratio"] = float(w.max() / w.min())  # most / least sampled task
        return m

    def train_iteration(self) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.algo.adaptive_lr is not None:  # KL-adaptive: the lr the last update left
            lr = self.algo.adaptive_lr.lr
        else:
            lr = self.cfg.optim.lr * lr_factor(self.cfg.optim, self.iteration, self.cfg.iterations)
        set_actor_lr(self.optimizer, lr)
        with autocast(self.device, self.cfg.precision):
            batch, metrics = self.collect()
        metrics["train/lr"] = lr
        t1 = time.perf_counter()
        with autocast(self.device, self.cfg.precision):
            if batch is None:
                log.warning("iteration %d: every group was all-success or all-failure; no update", self.iteration)
            elif self.cfg.algo == "ppo":
                metrics.update(self.algo.update(batch, train_policy=self.iteration >= self.cfg.ppo.critic_warmup))
            else:
                metrics.update(self.algo.update(batch))
        if batch is not None:
            self.collector.on_update()  # rollout workers get the new weights before the next rollout
        if self.algo.adaptive_lr is not None:
            metrics["train/lr_after"] = self.algo.adaptive_lr.lr  # where the KL-adaptive lr left the actor
        t2 = time.perf_counter()
        self.iteration += 1
        self.train_s += t2 - t0
        metrics.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "time/iteration_s": t2 - t0,
                        "time/train_min": self.train_s / 60, "progress/env_steps": float(self.env_steps)})
        return metrics

    # ------------------------------------------------------------ evaluation

    def _eval_env(self, train_spec) -> tuple[EnvConfig, Any]:
        """The env evaluations run in (``eval.env``, else a learned simulator's ``evaluate_in``, else the
        training env) and its spec."""
        c = self.cfg
        if c.eval.env.name:
            env = c.eval.env
        elif train_spec.evaluate_in:
            env = EnvConfig.from_mapping({"device": c.env.device, **train_spec.evaluate_in})
        elif c.rollout.max_episode_steps or c.rollout.time_limit_scale < 1:
            env = c.env  # the training envs' shorter time limit is not the evaluation's
        else:
            return c.env, train_spec
        if env.suite != c.env.suite:
            log.warning("training in %s/%s, evaluating in %s/%s", c.env.name, c.env.suite, env.name, env.suite)
        probe = make_env(env, num_envs=1, image_size=self.policy.config.image_size)
        spec = probe.spec
        probe.close()
        return env, spec

    def evaluate(self, episodes_per_task: int, heldout: bool = True, bank: str = "eval") -> dict[str, float]:
        """Greedy success on ``bank``'s initial states, as ``<bank>/<suite>[_<split>]/...`` metrics."""
        from reinforge.eval import evaluate

        if self.release_for_eval:
            self.collector.release_env()

        self.policy.eval()
        c, out = self.cfg, {}
        spec = self.eval_spec
        points = [(self.eval_env, split, "" if split == "train" else f"_{split}")
                  for split in ["train"] + (list(spec.heldout_splits) if c.eval.heldout and heldout else [])]
        if self.cotrain_env is not None:
            tag, env = self.cotrain_env
            points.append((env, "train", f"_{tag}"))
        for env, split, suffix in points:
            with autocast(self.device, c.precision):
                r = evaluate(lambda e: self.policy, env, split=split, episodes_per_task=episodes_per_task,
                             image_size=self.policy.config.image_size, tasks=list(c.eval.tasks) or None,
                             max_envs=c.eval.max_envs, seed=c.seed, bank=bank, max_envs_setting="eval.max_envs")
            key = f"{bank}/{c.suite}{suffix}"
            out[f"{key}/success_rate"] = r.success_rate
            out[f"{key}/mean_length"] = r.mean_length
            out.update({f"{key}/{name}": v for name, v in r.per_task.items()})
        return out

    def _evaluate_point(self, final: bool) -> dict[str, float]:
        """A periodic point (``eval.bank``) or a before / after point (``eval.final_bank``, and ``eval.bank`` for
        its curve). An env with one bank serves both from it: evaluated once, logged under both names."""
        e = self.cfg.eval
        if not final:
            return self.evaluate(e.episodes_per_task, e.periodic_heldout, e.bank)
        m = self.evaluate(e.final_episodes_per_task, True, e.final_bank)
        if e.bank != e.final_bank:
            if self.eval_spec.bank(e.bank) == self.eval_spec.bank(e.final_bank):
                m.update({e.bank + k[len(e.final_bank):]: v for k, v in m.items()})
            else:
                m.update(self.evaluate(e.episodes_per_task, e.periodic_heldout, e.bank))
        return m

    def _cotrain_env(self, ds) -> tuple[str, EnvConfig] | None:
        """The env the real demonstrations were recorded in, when it differs from the RL env (e.g. the built-in
        world's real domain) and ``cotrain.evaluate``: evaluated too, under ``eval/<suite>_<variant>``."""
        rec = ds.recorded_in
        variant = dict(rec.get("variant", {}))
        env = EnvConfig.from_mapping({"name": rec.get("env", "tabletop"), "suite": rec.get("suite") or self.cfg.suite,
                                      "device": self.cfg.env.device, **variant})
        if not self.cfg.cotrain.evaluate or any((env.name, env.suite, env.options) == (e.name, e.suite, e.options)
                                                for e in (self.cfg.env, self.eval_env)):
            return None
        tag = "_".join(str(v) for v in variant.values()) or "cotrain"
        return tag, env

    def record_videos(self, folder: Path) -> list[str]:
        """Greedy rollout videos of the current policy, one per task for the first ``eval.videos`` tasks."""
        from reinforge.eval import evaluate

        self.policy.eval()
        n = min(self.cfg.eval.videos, self.eval_spec.num_tasks)
        with autocast(self.device, self.cfg.precision):
            r = evaluate(lambda env: self.policy, self.eval_env, episodes_per_task=1, tasks=list(range(n)),
                         image_size=self.policy.config.image_size, video_dir=folder, video_format="mp4")
        return r.videos

    def _eval_point(self, logger: MetricLogger, final: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        m = self._evaluate_point(final)
        e = self.cfg.eval
        m.update({"iteration": float(self.iteration), "env_steps": float(self.env_steps),
                  "train_min": self.train_s / 60,
                  "episodes_per_task": float(e.final_episodes_per_task if final else e.episodes_per_task),
                  "eval_s": time.perf_counter() - t0})
        self.history.append(m)
        logger.log(self.iteration, {k: v for k, v in m.items() if k.startswith(("eval/", "val/"))})
        return m

    # ------------------------------------------------------------ the loop

    def run(self, progress: bool = True) -> dict[str, float]:
        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        # rows logged after the checkpoint we resumed from belong to a lost future: drop them
        logger = MetricLogger(self.out, wandb_project=c.wandb_project if c.wandb else None,
                              wandb_config=plain(asdict(c)), keep_until=self.iteration)
        try:  # the logger is closed (TensorBoard and W&B flushed) however the run ends
            return self._run(logger, progress)
        finally:
            logger.close()

    def _run(self, logger: MetricLogger, progress: bool) -> dict[str, float]:
        c = self.cfg
        record_run(self.out, seed=c.seed, config=plain(asdict(c)))
        if c.algo == "ppo" and c.iterations <= c.ppo.critic_warmup:
            log.warning("iterations=%d is within ppo.critic_warmup=%d: only the critic trains and the policy is never "
                        "updated (its success after equals before); run more iterations or lower ppo.critic_warmup",
                        c.iterations, c.ppo.critic_warmup)
        if not self.history:
            self._eval_point(logger, final=True)
            self.save()
        key = f"{c.eval.bank}/{c.suite}/success_rate"
        bar = ProgressBar(f"{c.algo} {c.suite}", c.iterations, start=self.iteration, enabled=progress,
                          rollout="-", eval=f"{self.history[-1][key]:.2f}")
        try:
            while self.iteration < c.iterations and self.stopped_at is None:
                try:
                    m = self.train_iteration()
                except FloatingPointError as e:  # raised before the optimizer step: the weights are intact
                    raise self._diverged(str(e)) from None
                last = self.iteration == c.iterations or self._plateaued(m)
                if self.stopped_at is not None:
                    m["progress/stopped_early"] = 1.0
                logger.log(self.iteration, m)
                bar.update(self.iteration, rollout=f"{m['rollout/success_rate']:.2f}")
                if c.eval.every and self.iteration % c.eval.every == 0 and not last:
                    point = self._eval_point(logger, final=False)
                    bar.update(self.iteration, eval=f"{point[key]:.2f}")
                if self.iteration % c.checkpoint_every == 0 or last:
                    self.save()
        finally:
            bar.close()
        if self.history[-1]["iteration"] != self.iteration:
            self._eval_point(logger, final=True)
            self.save()
        self.policy.save_pretrained(self.out / "policy")
        logger.close()
        if c.eval.videos:
            self.record_videos(self.out / "report" / "videos")
        from reinforge.eval.report import write_report

        write_report(self.out, self.history, suite=c.suite, algo=c.algo, policy_kind=self.policy.config.kind,
                     bank=c.eval.final_bank, curve_bank=c.eval.bank)
        return self.history[-1]

    def _plateaued(self, m: dict[str, float]) -> bool:
        """Record ``plateau.metric`` of this iteration; True (and ``stopped_at`` set) once it stopped rising."""
        p = self.cfg.plateau
        if not p.metric:
            return False
        if p.metric not in m:
            raise ValueError(f"plateau.metric={p.metric!r} is not logged by this run; choose one of "
                             f"{sorted(k for k in m if k.startswith(('rollout/', 'train/')))}")
        self.plateau_values.append(float(m[p.metric]))
        if not p.reached(self.plateau_values):
            return False
        self.stopped_at = self.iteration
        w = p.window
        log.info("%s plateaued at iteration %d (mean of the last %d iterations %.4g, of the %d before %.4g): "
                 "stopping", p.metric, self.iteration, w, sum(self.plateau_values[-w:]) / w, w,
                 sum(self.plateau_values[-2 * w:-w]) / w)
        return True

    def close(self) -> None:
        """Release the env (worker processes of real simulators) and the run folder."""
        if self._locked:
            self._locked = False
            fsutil.unlock_run(self.out)
        if hasattr(self, "collector"):
            self.collector.close()

    def __enter__(self) -> RLTrainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

