"""PPO with a critic for VLAs as in pi_RL / RLinf (arXiv 2510.25889; METHODS.md section 4): the pure functions.

PPO (arXiv 1707.06347) on a chunk-level MDP: one step = one policy call (an action chunk); its reward is the
sum of the chunk's rewards and it is done if any env step in it ended the episode. Advantages by GAE
(arXiv 1506.02438) with gamma 0.99, lambda 0.95; a time-limit truncation bootstraps from the value of the
last state instead of cutting to zero; the recursion never crosses an episode end. The policy loss is the
clipped surrogate of ``grpo.clipped_policy_loss`` with a dual clip (c = 3, arXiv 1912.09729) for negative
advantages; the value loss is a Huber loss (delta 10) with value clipping (0.2), the max of the clipped and
unclipped terms as in PPO's reference implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        episode_end: torch.Tensor, *, gamma: float = 0.99, lam: float = 0.95,
        valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, T) chunk steps.

    ``values`` V(s_t), ``next_values`` V(s_{t+1}) (for a truncated step: the value of its final state);
    ``terminated`` True where s_{t+1} is terminal (no bootstrap); ``episode_end`` True where the episode
    ended at step t for any reason (terminated or truncated; cuts the recursion). Steps where ``valid`` is
    False get zero advantage. Returns (advantages, returns = advantages + values), both (B, T).
    """
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_end = 1.0 - episode_end.to(rewards.dtype)
    delta = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = delta[:, t] + gamma * lam * not_end[:, t] * running
        adv[:, t] = running
    if valid is not None:
        adv = adv * valid.to(adv.dtype)
    return adv, adv + values


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std advantages over the valid entries (invalid entries stay 0)."""
    m = mask.to(adv.dtype)
    n = m.sum().clamp(min=1)
    mean = (adv * m).sum() / n
    std = (((adv - mean) ** 2 * m).sum() / n).sqrt()
    return (adv - mean) / (std + eps) * m


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float | None = 0.2, huber_delta: float = 10.0) -> torch.Tensor:
    """Masked mean of max(huber(V - R), huber(V_clipped - R)), V_clipped = V_old + clip(V - V_old)."""
    m = mask.to(values.dtype)
    loss = F.huber_loss(values, returns, reduction="none", delta=huber_delta)
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, F.huber_loss(clipped, returns, reduction="none", delta=huber_delta))
    return (loss * m).sum() / m.sum().clamp(min=1)
