"""Token-action VLA (OpenVLA-OFT, arXiv 2502.19645, as used by SimpleVLA-RL, arXiv 2509.09674;
METHODS.md section 1).

Each action dim is normalised to [-1, 1] and discretised into ``num_bins`` uniform bins; a call predicts
the whole chunk of H x D action tokens in ONE forward pass (parallel decoding): H learned placeholder
tokens are appended to the prompt, attend bidirectionally to everything, and each is decoded into D
categoricals. (Deviation from OpenVLA-OFT: one placeholder per chunk step rather than one per action
token, which is H times cheaper on a CPU; the categoricals are the same.) Sampling uses softmax(logits /
T); greedy takes the argmax. Log-probs are computed on logits / T, summed over the executed entries of
the chunk (``chunk``) or kept per token (``token``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from reinforge.policies.backbone import masked, masked_mean
from reinforge.policies.base import LogProb, Normalizer, Policy, PolicyConfig
from reinforge.types import Observation, PolicyOutput


def bin_tokens(x: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Normalised actions in [-1, 1] -> bin ids in [0, num_bins)."""
    return ((x.clamp(-1, 1) + 1) / 2 * num_bins).long().clamp(0, num_bins - 1)


def bin_centers(tokens: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin ids -> normalised actions at the bin centres."""
    return -1 + (tokens.float() + 0.5) * (2.0 / num_bins)


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: torch.Tensor | float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies (B, H, D) of ``tokens`` under softmax(logits / T).

    ``logits`` (B, H, D, K); ``temperature`` a float or (B,) tensor.
    """
    t = temperature if isinstance(temperature, float) else temperature.view(-1, 1, 1, 1)
    logp = F.log_softmax(logits.float() / t, dim=-1)
    lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


class TokenPolicy(Policy):
    """Discrete action tokens decoded in parallel from H placeholder tokens."""

    token_logprobs = True

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None):
        super().__init__(config, normalizer)
        c = config
        self.placeholders = nn.Parameter(torch.randn(c.horizon, c.d_model) * 0.02)
        self.head = nn.Linear(c.d_model, c.action_dim * c.num_bins)

    def features(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, H, D, bins) and value (B,) of one forward pass."""
        images, texts, state = self.prepare(obs)
        B, c = images.shape[0], self.config
        x, pad = self.backbone(images, texts, state, extra=self.placeholders.expand(B, -1, -1))
        q = x[:, -c.horizon:]
        logits = self.head(q).view(B, c.horizon, c.action_dim, c.num_bins)
        return logits, self.value(masked_mean(x[:, :-c.horizon], pad[:, :-c.horizon]))

    @torch.no_grad()
    def predict_value(self, obs: Observation) -> torch.Tensor | None:
        return self.features(obs)[1]

    def to_bins(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised actions -> the bin ids the head's logits index (uniform bins here)."""
        return bin_tokens(x, self.config.num_bins)

    def from_bins(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bin ids -> normalised actions."""
        return bin_centers(tokens, self.config.num_bins)

    def sft_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the demo's action tokens; padded steps and constant dims are masked out."""
        logits, _ = self.features(batch)
        target = self.to_bins(self.normalize_actions(batch["actions"].to(logits.device)))
        mask = self.loss_mask(batch)  # unpadded steps x the dims (unified: the embodiment's slots) that count
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view_as(target)
        loss = masked(ce, mask).sum() / mask.sum().clamp(min=1)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == target) & mask).sum() / mask.sum().clamp(min=1)
        return loss, {"sft/loss": float(loss.detach()), "sft/token_accuracy": float(acc)}

    def _reduce(self, per_token: torch.Tensor, logprob: LogProb, obs: Observation) -> torch.Tensor:
        self.check_logprob(logprob)
        mask = self.entry_mask(obs)
        if logprob == "token":
            return masked(per_token, mask)
        return masked(per_token, mask).sum((1, 2))

    @torch.no_grad()
    def act(self, obs: Observation, *, mode: Literal["sample", "greedy"] = "greedy",
            temperature: float = 1.0, generator: torch.Generator | None = None, logprob: LogProb = "chunk"
            ) -> PolicyOutput:
        if mode not in ("sample", "greedy"):
            raise ValueError(f"mode must be 'sample' or 'greedy', got {mode!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logits, value = self.features(obs)
        if mode == "greedy":
            tokens = logits.argmax(-1)
        else:
            probs = F.softmax(logits.float() / temperature, dim=-1)
            tokens = torch.multinomial(probs.flatten(0, 2), 1, generator=generator).view(probs.shape[:-1])
        temp = torch.full((tokens.shape[0],), float(temperature), device=tokens.device)
        lp, _ = token_log_probs(logits, tokens, temp)
        actions = self.to_native(self.unnormalize_actions(self.from_bins(tokens)))
        return PolicyOutput(actions=actions[:, : self.config.execute_steps], log_prob=self._reduce(lp, logprob, obs),
                            value=value, replay={"tokens": tokens, "temperature": temp})

    def evaluate(self, obs: Observation, replay: dict[str, torch.Tensor], *, logprob: LogProb = "chunk"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-prob (chunk: (B,), token: (B, H, D)), entropy (B,) and value of the replayed tokens."""
        logits, value = self.features(obs)
        lp, ent = token_log_probs(logits, replay["tokens"].to(logits.device), replay["temperature"].to(logits.device))
        entropy = masked(ent, self.entry_mask(obs)).sum((1, 2))
        return self._reduce(lp, logprob, obs), entropy, value
