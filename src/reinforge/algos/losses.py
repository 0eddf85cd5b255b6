"""Losses shared by the policy-gradient algorithms (GRPO, PPO): pure functions of tensors."""

from __future__ import annotations

import torch

from reinforge.policies.backbone import masked

__all__ = ["clipped_policy_loss", "masked"]


def clipped_policy_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float = 0.28,
                        dual_clip: float | None = None, per_trajectory: bool = True,
                        weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-style clipped surrogate, shared by GRPO and PPO.

    ``logp_new``, ``logp_old`` (B, T, ...) log-probs of the executed actions (chunk-level (B, T) or
    token-level (B, T, H, D)); ``advantages`` broadcastable to them (e.g. (B, T, 1, 1) for token-level);
    ``mask`` broadcastable as well, True where the
    entry was actually executed. Loss per entry: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), and,
    with ``dual_clip`` c, at most -c A for negative advantages. ``per_trajectory``: masked mean over each
    trajectory (dim 0 rows) then mean over trajectories (GRPO); otherwise a masked mean over all entries.
    ``weights`` (N,): rows are samples of a minibatch; the loss is the masked mean over each row's entries,
    then the ``weights``-weighted mean over rows (weights 1 / trajectory length give every trajectory the same
    total weight, the per-trajectory mean of a minibatch drawn from many trajectories).
    """
    dev = logp_new.device  # the rollout's tensors may live on another device than the policy
    logp_old, advantages, mask = logp_old.to(dev), advantages.to(dev), mask.to(dev)
    weights = weights.to(dev) if weights is not None else None
    keep = torch.broadcast_to(mask, logp_new.shape).bool()
    mask = keep.to(logp_new.dtype)
    adv = masked(torch.broadcast_to(advantages, logp_new.shape), keep)
    log_ratio = masked(logp_new - logp_old, keep)
    ratio = torch.exp(log_ratio)
    surr = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))
    if dual_clip is not None:
        surr = torch.where(adv < 0, torch.minimum(surr, -dual_clip * adv), surr)
    surr = masked(surr, keep)
    if weights is not None:
        if surr.dim() > 1:
            dims = tuple(range(1, surr.dim()))
            per, has = (surr * mask).sum(dims) / mask.sum(dims).clamp(min=1), (mask.sum(dims) > 0)
        else:
            per, has = surr * mask, mask > 0
        w = weights.to(surr.dtype) * has.to(surr.dtype)
        loss = (per * w).sum() / w.sum().clamp(min=1e-12)
    elif per_trajectory:
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
