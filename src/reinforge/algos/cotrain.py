"""Sim-real co-training (RL-Co, METHODS.md section 5): RL in simulation anchored by an SFT loss on real data.

Every gradient step of GRPO or PPO adds ``beta * L_SFT`` on a fresh batch of real demonstrations (the policy's
own SFT objective: flow-matching MSE for flow policies, token cross-entropy for token policies) to its RL loss,
``L = L_RL + beta * L_SFT``, so the update keeps the policy close to what the real demonstrations show while RL
improves it in simulation. reinforge takes one optimizer step per minibatch (no gradient accumulation), so
neither term is divided.

The same anchor is VLA-RFT's auxiliary flow-matching regulariser toward the ground-truth actions of its
demonstrations (arXiv 2510.00406: beta 0.01, weighted by clamp(approx_kl / 0.2, 0, 1), so it only pulls once the
policy has moved): set ``kl_gate: 0.2``. The update logs ``train/rl_loss``, ``train/sft_loss`` and
``train/sft_to_rl = beta * L_SFT / |L_RL|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reinforge.config import check
from reinforge.data.augment import AugmentConfig
from reinforge.data.dataset import DemoDataset
from reinforge.data.sampler import sample_batch
from reinforge.policies import Policy


@dataclass
class CotrainConfig:
    data: str = ""  # the real demonstrations (a dataset folder); "" = no co-training
    beta: float = 0.1  # weight of the SFT term (the reference code's default; its example uses 0.2)
    batch_size: int = 16  # real frames per SFT batch
    every_microbatch: bool = True  # a fresh real batch for every gradient step (else one per update)
    augment: bool = True  # the SFT augmentation (random shift, colour jitter) on real batches
    evaluate: bool = True  # also evaluate greedily in the env the real data was recorded in
    # > 0: the SFT weight is beta * clamp(approx_kl / kl_gate, 0, 1) with the minibatch's approximate KL (VLA-RFT)
    kl_gate: float = 0.0

    def __post_init__(self) -> None:
        check(self.beta >= 0, "cotrain.beta", self.beta, "must be >= 0")
        check(self.kl_gate >= 0, "cotrain.kl_gate", self.kl_gate, "must be >= 0 (0 = no gate)")
        check(self.batch_size >= 1, "cotrain.batch_size", self.batch_size, "must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.data)


class SFTAnchor:
    """The SFT term of co-training: ``loss()`` draws a real batch (its own seeded generator, checkpointed) and
    returns ``beta * L_SFT`` with its metrics."""

    def __init__(self, policy: Policy, cfg: CotrainConfig, seed: int = 0):
        if not cfg.enabled:
            raise ValueError("co-training needs cotrain.data: a folder of real demonstrations")
        pc = policy.config
        self.ds = DemoDataset.load(cfg.data, expect_image_size=pc.image_size, expect_action_dim=pc.action_dim)
        if self.ds.state_dim != pc.state_dim or self.ds.num_views != pc.num_views:
            raise ValueError(f"{cfg.data} has state dim {self.ds.state_dim} and {self.ds.num_views} views, the policy "
                             f"{pc.state_dim} and {pc.num_views}: record the real demonstrations for this embodiment")
        self.policy, self.cfg = policy, cfg
        self.gen = torch.Generator().manual_seed(seed + 7_777)
        self.augment = AugmentConfig(enabled=cfg.augment)
        self._batch: dict[str, Any] | None = None

    def new_update(self) -> None:
        """Called at the start of an update: with ``every_microbatch`` false, its one batch is drawn here."""
        self._batch = None if self.cfg.every_microbatch else self._sample()

    def _sample(self) -> dict[str, Any]:
        return sample_batch(self.ds, self.cfg.batch_size, self.policy.config.horizon, self.gen, self.augment)

    def weight(self, approx_kl: float | None) -> float:
        """beta, or with ``kl_gate`` beta * clamp(approx_kl / kl_gate, 0, 1)."""
        if not self.cfg.kl_gate:
            return self.cfg.beta
        if approx_kl is None:
            raise ValueError("cotrain.kl_gate needs the update's approximate KL; this algorithm does not pass it")
        return self.cfg.beta * min(max(approx_kl / self.cfg.kl_gate, 0.0), 1.0)

    def loss(self, rl_loss: torch.Tensor, approx_kl: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self._batch if self._batch is not None else self._sample()
        sft, _ = self.policy.sft_loss(batch)
        w = self.weight(approx_kl)
        weighted = w * sft
        rl = float(rl_loss.detach())
        return weighted, {"train/rl_loss": rl, "train/sft_loss": float(sft.detach()), "train/sft_weight": w,
                          "train/sft_to_rl": float(weighted.detach()) / max(abs(rl), 1e-8)}

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
