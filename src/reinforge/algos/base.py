"""What GRPO and PPO share: the optimizer (actor and critic parameter groups), minibatches over the valid
policy calls of a ``RolloutBatch``, re-evaluating their log-probs, and the clipped optimizer step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from reinforge.config import check
from reinforge.policies import Policy
from reinforge.policies.base import LogProb
from reinforge.types import RolloutBatch


@dataclass
class RLOptimConfig:
    lr: float = 1e-4  # actor
    critic_lr: float = 1e-3  # value head (PPO); a separate, higher rate as in pi_RL
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # actor learning-rate schedule over the run's iterations: "constant", or "linear" / "cosine" decay from
    # lr to lr * final_lr_ratio at the last iteration (the critic keeps critic_lr)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    final_lr_ratio: float = 0.1
    # > 0: a KL-adaptive actor lr (the "adaptive" schedule of RSL-RL / rl_games): after every policy gradient
    # step, lr / 1.5 where that minibatch's approx-KL to the rollout policy exceeded 2 * target_kl, lr * 1.5 where
    # it was under target_kl / 2, kept within [lr_min, lr_max]; starts at lr. 0 = off (lr follows `schedule`)
    target_kl: float = 0.0
    lr_min: float = 1e-6
    lr_max: float = 1e-3

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", list(self.betas),
              "must be two numbers in [0, 1)")
        check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        check(self.schedule in ("constant", "linear", "cosine"), "optim.schedule", self.schedule,
              "must be 'constant', 'linear' or 'cosine'")
        check(0 <= self.final_lr_ratio <= 1, "optim.final_lr_ratio", self.final_lr_ratio, "must be in [0, 1]")
        check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        check(self.critic_lr > 0, "optim.critic_lr", self.critic_lr, "must be > 0")
        check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0")
        check(self.target_kl >= 0, "optim.target_kl", self.target_kl, "must be >= 0 (0 = a fixed schedule)")
        if self.target_kl:
            check(self.schedule == "constant", "optim.schedule", self.schedule,
                  "must be 'constant' with optim.target_kl > 0 (the KL-adaptive lr is the schedule)")
            check(0 < self.lr_min <= self.lr <= self.lr_max, "optim.lr", self.lr,
                  f"must lie in [optim.lr_min, optim.lr_max] = [{self.lr_min}, {self.lr_max}]")


@dataclass
class KLAdaptiveLR:
    """The actor lr steered by each policy step's approx-KL: / 1.5 above 2 * target, * 1.5 under target / 2."""

    target: float
    lr: float
    lr_min: float
    lr_max: float
    factor: float = 1.5

    @classmethod
    def from_config(cls, cfg: RLOptimConfig) -> KLAdaptiveLR | None:
        return cls(cfg.target_kl, cfg.lr, cfg.lr_min, cfg.lr_max) if cfg.target_kl > 0 else None

    def observe(self, approx_kl: float) -> float:
        if approx_kl > 2 * self.target:
            self.lr = max(self.lr_min, self.lr / self.factor)
        elif approx_kl < self.target / 2:
            self.lr = min(self.lr_max, self.lr * self.factor)
        return self.lr


def lr_factor(cfg: RLOptimConfig, iteration: int, iterations: int) -> float:
    """Multiplier of the actor lr at ``iteration`` (0-based) of ``iterations``: 1 at the start, and for a decaying
    schedule ``final_lr_ratio`` at the last iteration."""
    if cfg.schedule == "constant" or iterations <= 1:
        return 1.0
    frac = min(max(iteration / (iterations - 1), 0.0), 1.0)
    r = cfg.final_lr_ratio
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - r) * frac
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * frac))


def set_actor_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        if g.get("name") == "actor":
            g["lr"] = lr


def actor_critic_parameters(policy: Policy, *, freeze_vision: bool, freeze_backbone: bool = False
                            ) -> tuple[list, list]:
    """(actor, critic) trainable parameters; a frozen vision encoder (or the whole frozen vision-language
    backbone: only the action head learns, as VLA-RFT) is in neither."""
    frozen = {id(p) for p in policy.vision_parameters()} if freeze_vision else set()
    if freeze_backbone and not policy.builtin_backbone:
        raise ValueError(f"freeze_backbone trains the built-in policies' action head alone; a {policy.config.kind} "
                         "policy has no such split: use freeze_vision (its vision towers stay frozen)")
    if freeze_backbone:
        frozen |= {id(p) for p in policy.backbone.parameters()}
        for p in policy.backbone.parameters():
            p.requires_grad_(False)
    critic = list(policy.value_head.parameters()) if policy.value_head is not None else []
    critic_ids = {id(p) for p in critic}
    actor = [p for p in policy.parameters() if id(p) not in frozen and id(p) not in critic_ids]
    for p in policy.vision_parameters():
        p.requires_grad_(not (freeze_vision or freeze_backbone))
    return actor, critic


def build_optimizer(policy: Policy, cfg: RLOptimConfig, *, freeze_vision: bool, train_critic: bool,
                    freeze_backbone: bool = False) -> torch.optim.Optimizer:
    actor, critic = actor_critic_parameters(policy, freeze_vision=freeze_vision, freeze_backbone=freeze_backbone)
    groups = [{"params": actor, "lr": cfg.lr, "name": "actor"}]
    if train_critic and critic:
        groups.append({"params": critic, "lr": cfg.critic_lr, "name": "critic"})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class PolicyGradientUpdate:
    """Owns the optimizer step of an on-policy algorithm over minibatches of a rollout."""

    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer, *, epochs: int, minibatch_size: int,
                 grad_clip: float, seed: int = 0, logprob: LogProb = "chunk"):
        self.policy, self.opt = policy, optimizer
        self.epochs, self.minibatch_size, self.grad_clip = epochs, minibatch_size, grad_clip
        self.gen = torch.Generator().manual_seed(seed)
        # token-level ratios where the policy has per-token log-probs and the config asks for them; flow
        # policies are chunk-level. The collector must gather log-probs at the same level (``self.logprob``).
        self.logprob: LogProb = "token" if logprob == "token" and policy.token_logprobs else "chunk"
        self.anchor = None  # co-training: an ``SFTAnchor`` whose loss joins every gradient step (algos/cotrain.py)
        self.adaptive_lr: KLAdaptiveLR | None = None  # set by the trainer for optim.target_kl > 0
        self._anchor_metrics: list[dict[str, float]] = []

    @property
    def token_level(self) -> bool:
        return self.logprob == "token"

    def minibatches(self, batch: RolloutBatch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(rows, steps) index tensors of shuffled minibatches of the valid policy calls, ``epochs`` times."""
        rows, steps = batch.valid.nonzero(as_tuple=True)
        n = rows.numel()
        num = max(1, round(n / self.minibatch_size))  # equal-sized minibatches
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=self.gen)
            for idx in perm.tensor_split(num):
                yield rows[idx], steps[idx]

    def evaluate(self, batch: RolloutBatch, rows: torch.Tensor, steps: torch.Tensor):
        """log-prob, entropy and value of the stored actions at policy calls (rows, steps)."""
        obs = batch.sample_obs(rows, steps)
        replay = {k: v[rows, steps] for k, v in batch.replay.items()}
        return self.policy.evaluate(obs, replay, logprob=self.logprob)

    def per_entry(self, adv: torch.Tensor, logp: torch.Tensor, token_level: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages (N,) and the mask shaped for ``logp``: token-level (N, H, D) log-probs get each sample's
        advantage on every entry and the policy's executed-entry mask; chunk-level (N,) ones count all."""
        if token_level:
            return adv[:, None, None], self.policy.entry_mask().expand_as(logp)
        return adv, torch.ones_like(logp, dtype=torch.bool)

    def begin_update(self) -> None:
        self._anchor_metrics = []
        if self.anchor is not None:
            self.anchor.new_update()

    def anchor_metrics(self) -> dict[str, float]:
        """The co-training terms of the update (means over its gradient steps)."""
        return mean_metrics(self._anchor_metrics) if self._anchor_metrics else {}

    def step(self, loss: torch.Tensor, *, anchor: bool = True, approx_kl: float | None = None,
             policy_step: bool = True) -> float:
        """One optimizer step on ``loss`` (+ the co-training SFT term when there is one and ``anchor``; its weight
        may be gated by the minibatch's ``approx_kl``, see ``CotrainConfig.kl_gate``). With a KL-adaptive lr,
        a ``policy_step`` (not a critic-only warm-up step) moves the actor lr by its ``approx_kl``."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the RL loss became {float(loss)}; lower optim.lr or check the rewards")
        if self.anchor is not None and anchor:
            sft, m = self.anchor.loss(loss, approx_kl=approx_kl)
            if not torch.isfinite(sft):
                raise FloatingPointError(f"the co-training SFT loss became {float(sft)}; lower optim.lr")
            self._anchor_metrics.append(m)
            loss = loss + sft
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if not torch.isfinite(gn):  # refuse the step: the weights stay finite
            self.opt.zero_grad(set_to_none=True)
            raise FloatingPointError(f"the gradient norm became {float(gn)}; lower optim.lr")
        self.opt.step()
        if self.adaptive_lr is not None and policy_step and approx_kl is not None:
            set_actor_lr(self.opt, self.adaptive_lr.observe(approx_kl))
        return float(gn)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), **({"anchor": self.anchor.state_dict()} if self.anchor else {}),
                **({"adaptive_lr": self.adaptive_lr.lr} if self.adaptive_lr else {})}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        if self.adaptive_lr is not None and "adaptive_lr" in state:
            a = self.adaptive_lr  # within the (possibly changed) bounds of the resumed config
            a.lr = min(max(float(state["adaptive_lr"]), a.lr_min), a.lr_max)
        if self.anchor is not None and "anchor" in state:
            self.anchor.load_state_dict(state["anchor"])


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}
