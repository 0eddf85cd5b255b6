"""GRPO for VLAs as in SimpleVLA-RL (arXiv 2509.09674; METHODS.md section 3): the pure functions.

GRPO (DeepSeekMath, arXiv 2402.03300) with the DAPO (arXiv 2503.14476) changes SimpleVLA-RL uses:
binary task-success reward per trajectory, advantages normalised within a group of G rollouts of the same
task from the same initial state, dynamic sampling (groups that all succeed or all fail carry no signal and
are dropped), asymmetric "clip-higher" ratio clipping (0.2 / 0.28), no KL term, no reference model, no
entropy bonus. Deliberate choices: the unbiased group std (as the reference), and the loss is a masked mean
per trajectory followed by a mean over trajectories.

Minibatches: a rollout's policy calls are shuffled into minibatches (not whole trajectories); each sample
is weighted by 1 / (its trajectory's number of policy calls), so in expectation every trajectory weighs the
same, as in the per-trajectory mean. Token policies use token-level ratios by default (one ratio per action
token, as the reference's token-mean loss); ``logprob: chunk`` uses one ratio per action chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from reinforge.algos.base import PolicyGradientUpdate, mean_metrics
from reinforge.algos.losses import clipped_policy_loss
from reinforge.config import check
from reinforge.types import RolloutBatch


@dataclass
class GRPOConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28  # clip-higher (DAPO)
    dynamic_sampling: bool = True
    max_rounds: int = 4  # rollout rounds per iteration to fill the batch with informative groups
    epochs: int = 1
    minibatch_size: int = 512  # policy calls per gradient step
    logprob: Literal["token", "chunk"] = "token"  # token policies only; flow policies are chunk-level
    # the trajectory outcome: binary task "success" (SimpleVLA-RL), or the episode "return" (sum of the env's
    # rewards), for continuous rewards such as the world model's verified reward (VLA-RFT)
    reward: Literal["success", "return"] = "success"
    entropy_coef: float = 0.0  # entropy bonus (VLA-RFT: 0.003; SimpleVLA-RL: none)
    dual_clip: float = 0.0  # dual-clip bound c for negative advantages (VLA-RFT: 3); 0 = off

    def __post_init__(self) -> None:
        check(0 <= self.clip_low < 1, "grpo.clip_low", self.clip_low, "must be in [0, 1)")
        check(self.clip_high >= 0, "grpo.clip_high", self.clip_high, "must be >= 0")
        check(self.max_rounds >= 1, "grpo.max_rounds", self.max_rounds, "must be >= 1")
        check(self.epochs >= 1, "grpo.epochs", self.epochs, "must be >= 1")
        check(self.minibatch_size >= 1, "grpo.minibatch_size", self.minibatch_size, "must be >= 1")
        check(self.logprob in ("token", "chunk"), "grpo.logprob", self.logprob, "must be 'token' or 'chunk'")
        check(self.reward in ("success", "return"), "grpo.reward", self.reward, "must be 'success' or 'return'")
        check(self.entropy_coef >= 0, "grpo.entropy_coef", self.entropy_coef, "must be >= 0")
        check(self.dual_clip == 0 or self.dual_clip > 1, "grpo.dual_clip", self.dual_clip, "must be 0 (off) or > 1")


def flat_groups(rewards: torch.Tensor, *, rel_tol: float = 1e-5) -> torch.Tensor:
    """(N, G) rewards -> (N,) bool: groups whose spread is within float32 rounding of their rewards (std <=
    rel_tol * max(1, |mean|)), computed in float64; they carry no signal."""
    r = rewards.double()
    return r.std(1, unbiased=True) <= rel_tol * r.mean(1).abs().clamp(min=1.0)


def group_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, rel_tol: float = 1e-5) -> torch.Tensor:
    """(N, G) trajectory rewards of N groups -> (N, G) advantages (R - mean) / (std + eps), std unbiased.

    Computed in float64, and a group whose spread is within float32 rounding of its rewards (std <= rel_tol *
    max(1, |mean|)) gets zero advantage: equal continuous rewards (e.g. a learned or world-model reward) that
    rounding made unequal carry no signal, and dividing their noise by std + eps would invent one."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (num_groups, G) with G >= 2, got {tuple(rewards.shape)}")
    r = rewards.double()
    mean = r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True, unbiased=True)
    flat = flat_groups(rewards, rel_tol=rel_tol)[:, None]
    adv = torch.where(flat, torch.zeros_like(r), (r - mean) / (std + eps))
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def dynamic_sampling_keep(rewards: torch.Tensor, *, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """(N, G) binary rewards -> (N,) bool: keep groups whose success rate lies in [low, high]."""
    rate = rewards.float().mean(1)
    return (rate >= low) & (rate <= high)


def trajectory_outcomes(batch: RolloutBatch, reward: Literal["success", "return"]) -> torch.Tensor:
    """(B,) outcome of each episodic row: its binary success, or its return (the sum of its chunk rewards)."""
    if reward == "success":
        return batch.episode_success.float()
    return torch.where(batch.valid, batch.reward, 0.0).double().sum(1).float()


def row_advantages(success: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """(B,) trajectory advantages from (B,) outcomes (binary success or returns) and (B,) group ids (rows of a
    group contiguous)."""
    _, counts = torch.unique_consecutive(group, return_counts=True)
    G = int(counts[0])
    if not bool((counts == G).all()) or group.numel() % G:
        raise ValueError(f"every GRPO group must hold the same number of contiguous rows, got sizes {counts.tolist()}")
    return group_advantages(success.float().view(-1, G)).flatten()


class GRPO(PolicyGradientUpdate):
    """GRPO's update: group-normalised outcome advantages, clip-higher surrogate, no KL, no critic."""

    def __init__(self, policy, optimizer, cfg: GRPOConfig, *, grad_clip: float, seed: int = 0):
        super().__init__(policy, optimizer, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                         grad_clip=grad_clip, seed=seed, logprob=cfg.logprob)
        self.cfg = cfg

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        if batch.group is None:
            raise ValueError("GRPO needs grouped episodic rollouts (rollout.mode: episodic)")
        adv = row_advantages(trajectory_outcomes(batch, self.cfg.reward), batch.group)
        calls = batch.valid.sum(1).clamp(min=1).float()
        self.policy.train()
        self.begin_update()
        rows_metrics = []
        for rows, steps in self.minibatches(batch):
            logp, ent, _ = self.evaluate(batch, rows, steps)
            old = batch.log_prob[rows, steps]
            if logp.shape != old.shape:
                raise ValueError(f"the rollout stored log-probs of shape {tuple(old.shape[1:])} but the policy now "
                                 f"gives {tuple(logp.shape[1:])}: collect with logprob={self.logprob!r} (the "
                                 "collector's logprob must be the algorithm's)")
            a, mask = self.per_entry(adv[rows], logp, self.token_level)
            loss, m = clipped_policy_loss(logp, old, a, mask, clip_low=self.cfg.clip_low,
                                          clip_high=self.cfg.clip_high, weights=1.0 / calls[rows],
                                          dual_clip=self.cfg.dual_clip or None)
            if self.cfg.entropy_coef:
                loss = loss - self.cfg.entropy_coef * ent.mean()
            gn = self.step(loss, approx_kl=m["train/approx_kl"])
            rows_metrics.append({**m, "train/policy_loss": float(loss.detach()), "train/grad_norm": gn,
                                 "train/entropy": float(ent.mean().detach())})
        out = mean_metrics(rows_metrics)
        out.update(self.anchor_metrics())
        out["train/advantage_abs"] = float(adv.abs().mean())
        out["train/num_samples"] = float(batch.num_samples)
        return out
