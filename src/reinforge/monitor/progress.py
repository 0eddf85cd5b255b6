"""Episode-progress prediction on a frozen VLA policy's features (Green-VLA, arXiv 2602.00919).

Green-VLA predicts how far along its task the robot is, so that it can tell when the task is done (and stop
instead of fidgeting on until a time limit). Here a small MLP reads the monitors' features (``features.py``:
pooled backbone features + standardised state, standardised again with the training frames' mean / std) and
predicts two things per observation:

- progress in [0, 1] (a sigmoid), trained with MSE towards ``frame_index / (length - 1)`` of the demonstration
  frame (1 on the frame where the demo reached its goal: recorded demos end on success);
- an "episode end" logit, trained with BCE towards "this frame is within the last ``end_frames`` frames of its
  demonstration".

Loss = MSE + ``end_weight`` * BCE, AdamW, minibatches drawn with a seeded generator; whole episodes are held out
for the validation error, reported next to the predict-the-mean baseline (the mean training target).

Deviation from Green-VLA: it trains its progress prediction inside the VLA. Here it is a separate head on the
features of a frozen policy, so that it can be added to any trained reinforge policy (SFT or RL) without
touching its weights or its action quality, and refitted in seconds when the policy changes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reinforge.data import DemoDataset
from reinforge.monitor.features import (
    dataset_features,
    episode_frames,
    feature_dim,
    policy_features,
    policy_fingerprint,
    split_episodes,
)
from reinforge.monitor.storage import REFIT, check_tensors, meta_number, read_monitor, write_monitor
from reinforge.policies import Policy
from reinforge.types import Observation

log = logging.getLogger(__name__)

KIND = "progress_head"


@dataclass
class ProgressConfig:
    """How a ``ProgressHead`` is built and trained."""

    hidden: int = 128
    layers: int = 2  # hidden layers of the MLP
    end_frames: int = 5  # k: the last k frames of a demonstration are "episode end"
    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    end_weight: float = 1.0  # weight of the episode-end BCE next to the progress MSE
    heldout_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "layers", "end_frames", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"progress {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.end_weight < 0:
            raise ValueError(f"progress lr must be > 0, weight_decay and end_weight >= 0; got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, end_weight={self.end_weight}")


# ------------------------------------------------------------------------------------------ pure functions


def progress_targets(frame_index: torch.Tensor, length: torch.Tensor, end_frames: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of frames (N,) at ``frame_index`` of episodes of ``length`` (N,): progress
    ``frame / (length - 1)`` (N,) float (1 for one-frame episodes) and ``is_end`` (N,) bool, the frame is one
    of the last ``end_frames`` of its episode."""
    frac = frame_index.double() / (length.double() - 1).clamp(min=1.0)
    progress = torch.where(length > 1, frac, torch.ones_like(frac)).float()
    return progress, frame_index >= length - end_frames


def progress_loss(progress: torch.Tensor, end_logit: torch.Tensor, target: torch.Tensor, is_end: torch.Tensor,
                  *, end_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE of predicted ``progress`` (B,) against ``target`` (B,) + ``end_weight`` * BCE of ``end_logit`` (B,)
    against ``is_end`` (B,) bool. Returns (loss, metrics)."""
    mse = F.mse_loss(progress, target)
    bce = F.binary_cross_entropy_with_logits(end_logit, is_end.float())
    loss = mse + end_weight * bce
    return loss, {"progress/mse": mse.item(), "progress/end_bce": bce.item(), "progress/loss": loss.item()}


# ------------------------------------------------------------------------------------------ the head


class ProgressHead(nn.Module):
    """MLP (features (B, D) -> progress (B,) in [0, 1], episode-end logit (B,)) on standardised features.

    ``feat_mean`` / ``feat_std`` (D,) buffers standardise the features (training frames' statistics); ``meta``
    records sizes, training config, validation metrics and the policy's fingerprint."""

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 2, meta: dict[str, Any] | None = None):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.GELU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], 2))
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.in_dim, self.hidden, self.layers = in_dim, hidden, layers
        self.meta: dict[str, Any] = dict(meta or {})

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Progress (B,) in [0, 1] and episode-end logit (B,) of features (B, D)."""
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"the progress head reads ({self.in_dim},)-dim features, got {tuple(features.shape)}; "
                             f"it was fitted on another policy: {REFIT}")
        x = (features.to(self.feat_mean.device).float() - self.feat_mean) / self.feat_std
        out = self.mlp(x)
        return torch.sigmoid(out[:, 0]), out[:, 1]

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(progress (B,), episode-end probability (B,)) of features (B, D), in eval mode."""
        was = self.training
        self.eval()
        try:
            progress, end_logit = self(features)
        finally:
            self.train(was)
        return progress, torch.sigmoid(end_logit)

    def predict_obs(self, policy: Policy, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` on a batch of observations under ``policy``."""
        return self.predict(policy_features(policy, obs))

    def check_policy(self, policy: Policy) -> None:
        """Refuse a policy of other feature sizes; warn when its weights differ from the fitted policy's."""
        if feature_dim(policy) != self.in_dim:
            raise ValueError(f"the progress head reads {self.in_dim}-dim features; this policy gives "
                             f"{feature_dim(policy)} (d_model + state_dim): {REFIT}")
        if self.meta.get("policy_fingerprint") not in (None, policy_fingerprint(policy)):
            log.warning("the progress head was fitted on other policy weights; its predictions mean little for "
                        "this policy: %s", REFIT)

    def save(self, path: str | Path) -> Path:
        """Write ``monitor.json`` + ``monitor.safetensors`` into the folder ``path`` (atomically)."""
        meta = {**self.meta, "in_dim": self.in_dim, "hidden": self.hidden, "layers": self.layers}
        return write_monitor(path, KIND, dict(self.state_dict()), meta)

    @classmethod
    def load(cls, path: str | Path) -> ProgressHead:
        """Read a head written by ``save``; a corrupt or foreign folder is a ``ValueError``."""
        tensors, meta = read_monitor(path, KIND)
        sizes = [int(meta_number(meta, k, path, integer=True)) for k in ("in_dim", "hidden", "layers")]
        if min(sizes) < 1:
            raise ValueError(f"{path}: sizes in_dim/hidden/layers {sizes} must be >= 1; the head is corrupt: {REFIT}")
        head = cls(*sizes, meta=meta)
        check_tensors(tensors, {k: tuple(v.shape) for k, v in head.state_dict().items()}, path, KIND)
        if bool((tensors["feat_std"] <= 0).any()):
            raise ValueError(f"{path}: feat_std must be > 0; the head is corrupt: {REFIT}")
        head.load_state_dict(tensors)
        return head.eval()


# ------------------------------------------------------------------------------------------ training


def _train(head: ProgressHead, x: torch.Tensor, target: torch.Tensor, is_end: torch.Tensor, config: ProgressConfig
           ) -> dict[str, float]:
    """The AdamW loop on training features ``x`` (N, D); returns the last step's metrics."""
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    head.train()
    metrics: dict[str, float] = {}
    for _ in range(config.steps):
        idx = torch.randint(0, x.shape[0], (min(config.batch_size, x.shape[0]),), generator=gen)
        progress, end_logit = head(x[idx])
        loss, metrics = progress_loss(progress, end_logit, target[idx], is_end[idx], end_weight=config.end_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.eval()
    return metrics


@torch.no_grad()
def _validate(head: ProgressHead, x: torch.Tensor, target: torch.Tensor, is_end: torch.Tensor, baseline: float
              ) -> dict[str, float]:
    progress, end_prob = head.predict(x)
    return {"val_mse": float(F.mse_loss(progress, target)),
            "baseline_mse": float(((target - baseline) ** 2).mean()),
            "val_mae": float((progress - target).abs().mean()),
            "val_end_accuracy": float(((end_prob >= 0.5) == is_end).float().mean())}


def fit_progress(policy: Policy, dataset: DemoDataset, config: ProgressConfig | None = None, *,
                 features: torch.Tensor | None = None, batch_size: int = 256) -> ProgressHead:
    """Train a ``ProgressHead`` on ``dataset``'s training episodes of the frozen ``policy`` and validate it on
    the held-out ones (``head.meta``: ``val_mse``, ``baseline_mse`` (predicting the mean), ``val_mae``,
    ``val_end_accuracy``). ``features`` (F, D): precomputed features of every frame."""
    config = config or ProgressConfig()
    fit_eps, held_eps = split_episodes(dataset.num_episodes, config.heldout_fraction, config.seed)
    feats = dataset_features(policy, dataset, batch_size=batch_size) if features is None else features
    lengths = torch.tensor([e["length"] for e in dataset.episodes])[dataset.episode_index]
    target, is_end = progress_targets(dataset.frame_index, lengths, config.end_frames)
    tr, va = episode_frames(dataset, fit_eps), episode_frames(dataset, held_eps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = ProgressHead(feats.shape[1], config.hidden, config.layers)
    std = feats[tr].std(0)
    head.feat_mean.copy_(feats[tr].mean(0))
    head.feat_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    last = _train(head, feats[tr], target[tr], is_end[tr], config)
    val = _validate(head, feats[va], target[va], is_end[va], float(target[tr].mean()))
    head.meta = {"d_model": policy.config.d_model, "state_dim": policy.config.state_dim,
                 "policy_fingerprint": policy_fingerprint(policy), "dataset": str(dataset.root),
                 "fit_episodes": fit_eps.tolist(), "heldout_episodes": held_eps.tolist(), "config": asdict(config),
                 "train_loss": last["progress/loss"], **val}
    log.info("progress head: held-out MSE %.4f (predict-the-mean %.4f), end accuracy %.3f", val["val_mse"],
             val["baseline_mse"], val["val_end_accuracy"])
    return head
