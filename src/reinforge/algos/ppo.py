"""PPO with a critic for VLAs as in pi_RL / RLinf (arXiv 2510.25889; METHODS.md section 4): the pure functions.

PPO (arXiv 1707.06347) on a chunk-level MDP: one step = one policy call (an action chunk); its reward is the
sum of the chunk's rewards and it is done if any env step in it ended the episode. Advantages by GAE
(arXiv 1506.02438) with gamma 0.99, lambda 0.95; a time-limit truncation bootstraps from the value of the
last state instead of cutting to zero; the recursion never crosses an episode end. The policy loss is the
clipped surrogate of ``losses.clipped_policy_loss`` with a dual clip (c = 3, arXiv 1912.09729) for negative
advantages; the value loss is a Huber loss (delta 10) with value clipping (0.2), the max of the clipped and
unclipped terms as in PPO's reference implementation. Total loss = policy + vf_coef * value - ent_coef *
entropy; the critic has its own (higher) learning rate, and ``critic_warmup`` iterations train the critic
alone (policy loss off). Log-probs are chunk-level (one ratio per policy call) for both policy kinds, or, for
token policies with ``logprob: token``, one ratio per executed token that carries its chunk's advantage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from reinforge.algos.base import PolicyGradientUpdate, mean_metrics
from reinforge.algos.losses import clipped_policy_loss, masked
from reinforge.config import check
from reinforge.types import RolloutBatch


@dataclass
class PPOConfig:
    gamma: float = 0.99
    lam: float = 0.95
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0  # 0 = off
    vf_coef: float = 0.5
    ent_coef: float = 0.0  # pi_RL: 0.005 for Flow-Noise, 0 for Flow-SDE
    value_clip: float = 0.2  # 0 = off
    huber_delta: float = 10.0
    epochs: int = 4
    minibatch_size: int = 512
    normalize_advantages: bool = True
    critic_warmup: int = 0  # iterations with the policy loss off
    # token policies: one ratio per action chunk (the product over its tokens), or one per executed token with
    # the chunk's advantage (as GRPO's token-mean loss); flow policies are always chunk-level
    logprob: Literal["token", "chunk"] = "chunk"

    def __post_init__(self) -> None:
        check(0 < self.gamma <= 1, "ppo.gamma", self.gamma, "must be in (0, 1]")
        check(0 <= self.lam <= 1, "ppo.lam", self.lam, "must be in [0, 1]")
        check(0 < self.clip_low < 1, "ppo.clip_low", self.clip_low, "must be in (0, 1)")
        check(self.clip_high > 0, "ppo.clip_high", self.clip_high, "must be > 0")
        check(self.vf_coef >= 0, "ppo.vf_coef", self.vf_coef, "must be >= 0")
        check(self.ent_coef >= 0, "ppo.ent_coef", self.ent_coef, "must be >= 0")
        check(self.value_clip >= 0, "ppo.value_clip", self.value_clip, "must be >= 0 (0 = off)")
        check(self.huber_delta > 0, "ppo.huber_delta", self.huber_delta, "must be > 0")
        check(self.dual_clip == 0 or self.dual_clip > 1, "ppo.dual_clip", self.dual_clip, "must be 0 (off) or > 1")
        check(self.epochs >= 1, "ppo.epochs", self.epochs, "must be >= 1")
        check(self.minibatch_size >= 1, "ppo.minibatch_size", self.minibatch_size, "must be >= 1")
        check(self.critic_warmup >= 0, "ppo.critic_warmup", self.critic_warmup, "must be >= 0")
        check(self.logprob in ("token", "chunk"), "ppo.logprob", self.logprob, "must be 'token' or 'chunk'")


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        episode_end: torch.Tensor, *, gamma: float = 0.99, lam: float = 0.95,
        valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) chunk steps.

    ``values`` V(s_t), ``next_values`` V(s_{t+1}) (for a truncated step: the value of its final state);
    ``terminated`` True where s_{t+1} is terminal (no bootstrap); ``episode_end`` True where the episode
    ended at step t for any reason (terminated or truncated; cuts the recursion). Steps where ``valid`` is
    False get zero advantage and pass nothing to the steps before them (padding, and a chunk lost to a simulator
    fault, whose predecessor bootstraps from V(s_t) through ``next_values``). Returns (advantages, returns =
    advantages + values), both (B, T).
    """
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_end = 1.0 - episode_end.to(rewards.dtype)
    delta = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = delta[:, t] + gamma * lam * not_end[:, t] * running
        if valid is not None:
            running = torch.where(valid[:, t], running, torch.zeros_like(running))
        adv[:, t] = running
    if valid is not None:
        adv = masked(adv, valid)
    return adv, adv + values


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std advantages over the valid entries (invalid entries stay 0)."""
    n = mask.sum().clamp(min=1)
    mean = masked(adv, mask).sum() / n
    std = (masked((adv - mean) ** 2, mask).sum() / n).sqrt()
    return masked((adv - mean) / (std + eps), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float | None = 0.2, huber_delta: float = 10.0) -> torch.Tensor:
    """Masked mean of max(huber(V - R), huber(V_clipped - R)), V_clipped = V_old + clip(V - V_old)."""
    loss = F.huber_loss(values, returns, reduction="none", delta=huber_delta)
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, F.huber_loss(clipped, returns, reduction="none", delta=huber_delta))
    return masked(loss, mask).sum() / mask.sum().clamp(min=1)


class PPO(PolicyGradientUpdate):
    """PPO's update on chunk-level steps: GAE advantages, dual-clip surrogate, clipped Huber value loss."""

    def __init__(self, policy, optimizer, cfg: PPOConfig, *, grad_clip: float, seed: int = 0):
        if policy.value_head is None:
            raise ValueError("PPO needs a value head: the policy was built with value_head=false; fine-tune a "
                             "policy with policy.value_head=true or use GRPO")
        super().__init__(policy, optimizer, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                         grad_clip=grad_clip, seed=seed, logprob=cfg.logprob)
        self.cfg = cfg

    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        adv, ret = gae(batch.reward, batch.value, batch.next_value, batch.terminated,
                       batch.terminated | batch.truncated, gamma=c.gamma, lam=c.lam, valid=batch.valid)
        if c.normalize_advantages:
            adv = normalize_advantages(adv, batch.valid)
        return adv, ret

    def update(self, batch: RolloutBatch, *, train_policy: bool = True) -> dict[str, float]:
        if batch.value is None or batch.next_value is None:
            raise ValueError("PPO needs values in the rollout (collect with need_values=True)")
        c = self.cfg
        adv, ret = self.advantages(batch)
        self.policy.train()
        self.begin_update()
        rows_metrics = []
        for rows, steps in self.minibatches(batch):
            logp, ent, value = self.evaluate(batch, rows, steps)
            a, mask = self.per_entry(adv[rows, steps], logp, self.token_level)
            pol, m = clipped_policy_loss(logp, batch.log_prob[rows, steps], a, mask,
                                         clip_low=c.clip_low, clip_high=c.clip_high,
                                         dual_clip=c.dual_clip or None, per_trajectory=False)
            every = torch.ones_like(value, dtype=torch.bool)
            dev = value.device  # the rollout lives on the CPU, the policy maybe on a GPU
            vl = value_loss(value, batch.value[rows, steps].to(dev), ret[rows, steps].to(dev), every,
                            clip=c.value_clip or None, huber_delta=c.huber_delta)
            entropy = ent.mean()
            # critic warm-up trains the critic only: no policy or entropy term reaches the actor
            loss = c.vf_coef * vl + ((pol - c.ent_coef * entropy) if train_policy else 0.0 * pol)
            gn = self.step(loss, anchor=train_policy, approx_kl=m["train/approx_kl"],  # warm-up: no SFT term
                           policy_step=train_policy)
            rows_metrics.append({**m, "train/policy_loss": float(pol.detach()), "train/value_loss": float(vl.detach()),
                                 "train/entropy": float(entropy.detach()), "train/grad_norm": gn})
        out = mean_metrics(rows_metrics)
        out.update(self.anchor_metrics())
        v, r = batch.value[batch.valid], ret[batch.valid]
        out["train/explained_variance"] = float(1 - (r - v).var() / r.var().clamp(min=1e-8))
        out["train/value_mean"] = float(v.mean())
        out["train/num_samples"] = float(batch.num_samples)
        return out
