"""GRPO for VLAs as in SimpleVLA-RL (arXiv 2509.09674; METHODS.md section 3): the pure functions.

GRPO (DeepSeekMath, arXiv 2402.03300) with the DAPO (arXiv 2503.14476) changes SimpleVLA-RL uses:
binary task-success reward per trajectory, advantages normalised within a group of G rollouts of the same
task from the same initial state, dynamic sampling (groups that all succeed or all fail carry no signal and
are dropped), asymmetric "clip-higher" ratio clipping (0.2 / 0.28), no KL term, no reference model, no
entropy bonus. Deliberate choices: the unbiased group std (as the reference), and the loss is a masked mean
per trajectory followed by a mean over trajectories.

The rollout collector and the trainer that owns the optimizer step arrive with the RL milestone; these
functions are their numerical core.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """(N, G) trajectory rewards of N groups -> (N, G) advantages (R - mean) / (std + eps), std unbiased."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (num_groups, G) with G >= 2, got {tuple(rewards.shape)}")
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, keepdim=True, unbiased=True)
    return (rewards - mean) / (std + eps)


def dynamic_sampling_keep(rewards: torch.Tensor, *, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
    """(N, G) binary rewards -> (N,) bool: keep groups whose success rate lies in [low, high]."""
    rate = rewards.float().mean(1)
    return (rate >= low) & (rate <= high)


def clipped_policy_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.28,
                        dual_clip: float | None = None, per_trajectory: bool = True
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-style clipped surrogate, shared by GRPO and PPO.

    ``logp_new``, ``logp_old`` (B, T, ...) log-probs of the executed actions (chunk-level (B, T) or
    token-level (B, T, H, D)); ``advantages`` broadcastable to them (e.g. (B, T, 1, 1) for token-level);
    ``mask`` broadcastable as well, True where the
    entry was actually executed. Loss per entry: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), and,
    with ``dual_clip`` c, at most -c A for negative advantages. ``per_trajectory``: masked mean over each
    trajectory (dim 0 rows) then mean over trajectories (GRPO); otherwise a masked mean over all entries.
    """
    adv = torch.broadcast_to(advantages, logp_new.shape)
    mask = torch.broadcast_to(mask, logp_new.shape).to(logp_new.dtype)
    log_ratio = (logp_new - logp_old) * mask
    ratio = torch.exp(log_ratio)
    surr = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
    if dual_clip is not None:
        surr = torch.where(adv < 0, torch.minimum(surr, -dual_clip * adv), surr)
    if per_trajectory:
        dims = tuple(range(1, surr.dim()))
        per = (surr * mask).sum(dims) / mask.sum(dims).clamp(min=1)
        has = (mask.sum(dims) > 0).to(surr.dtype)
        loss = (per * has).sum() / has.sum().clamp(min=1)
    else:
        loss = (surr * mask).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        clipped = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).to(mask.dtype)
        metrics = {"train/clip_frac": float((clipped * mask).sum() / n),
                   "train/approx_kl": float((((ratio - 1) - log_ratio) * mask).sum() / n),
                   "train/ratio_mean": float((ratio * mask).sum() / n)}
    return loss, metrics
