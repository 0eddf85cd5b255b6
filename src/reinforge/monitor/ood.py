"""Out-of-distribution detection on a frozen VLA policy's inputs (Green-VLA, arXiv 2602.00919).

Green-VLA runs an OOD detector next to the VLA at inference, so that a robot notices when what it sees is unlike
its training data. Here the detector is the simplest calibrated density that fits any reinforge policy:

- Features: ``concat(policy.pooled_features(obs), policy.normalize_state(state))`` (B, d_model + S), see
  ``features.py``.
- Density: one Gaussian fitted on the frames of the training episodes (at most ``max_frames``, evenly drawn),
  with a shrinkage covariance: Ledoit-Wolf (2004) towards ``mu * I`` (``mu`` the mean variance) with the
  closed-form optimal shrinkage, or a fixed shrinkage in [0, 1]; plus a ridge of ``1e-6 * mu`` so that the
  Cholesky factor exists even when a feature never varies (e.g. the state dims the policy masks).
- Score: the Mahalanobis distance ``sqrt((x - m)^T C^-1 (x - m))`` (B,); higher = less familiar.
- Threshold: the ``quantile`` (default 0.99) of the scores of held-out *episodes* of the training data (episodes,
  not frames, because neighbouring frames of one episode are near-duplicates), so ``flag`` fires on about 1% of
  in-distribution frames. Scores on the fitted frames themselves would be biased low, so they are never used.
- Episode score at evaluation: the max over the episode's policy calls (``episode_scores``; a quantile
  optionally). An episode makes many calls, so the per-episode flag rate of in-distribution episodes is
  higher than the per-frame 1%: report both.

Deviations from Green-VLA: it models the training distribution inside its own stack and nudges actions back
towards the training density when a state is flagged; neither is reproduced: this detector is a separate,
post-hoc model of a frozen policy's features, and it only scores and flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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

KIND = "ood_detector"
RIDGE = 1e-6


# ------------------------------------------------------------------------------------------ pure functions


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrinkage covariance of samples ``x`` (N, D): ``(1 - s) S + s mu I`` with S the empirical
    covariance (1/N), mu = tr(S) / D and the optimal s = min(b2, d2) / d2, where d2 = ||S - mu I||^2 / D and
    b2 = (1/N^2) sum_k ||x_k x_k^T - S||^2 / D (Frobenius norms). Returns ((D, D) float64, s)."""
    n, d = x.shape
    xc = x.double() - x.double().mean(0)
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    d2 = ((s - mu * eye) ** 2).sum() / d
    # sum_k ||x_k x_k^T - S||^2 = sum_k ||x_k||^4 - N ||S||^2
    b2 = (((xc**2).sum(1) ** 2).sum() - n * (s**2).sum()) / (n**2 * d)
    shrink = 0.0 if float(d2) <= 0 else float(torch.clamp(b2, min=0.0).minimum(d2) / d2)
    return (1 - shrink) * s + shrink * mu * eye, shrink


def shrunk_gaussian(x: torch.Tensor, shrinkage: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean (D,), shrinkage covariance (D, D) (float64, with a ``1e-6 * mu`` ridge) and the shrinkage used, of
    samples ``x`` (N, D); ``shrinkage`` None = Ledoit-Wolf's optimum, else a fixed value in [0, 1]."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"fitting a Gaussian needs (N >= 2, D) samples, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the features hold NaN or inf; check the policy's weights and normalisation statistics")
    x = x.double()
    d = x.shape[1]
    if shrinkage is None:
        cov, shrinkage = ledoit_wolf(x)
    else:
        xc = x - x.mean(0)
        s = xc.T @ xc / x.shape[0]
        cov = (1 - shrinkage) * s + shrinkage * torch.trace(s) / d * torch.eye(d, dtype=s.dtype)
    mu = float(torch.trace(cov)) / d
    if mu <= 0:
        raise ValueError("every feature is constant over the fitted frames: there is no distribution to model "
                         "(is the policy's backbone all zeros?)")
    return x.mean(0), cov + RIDGE * mu * torch.eye(d, dtype=cov.dtype), shrinkage


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """(N,) Mahalanobis distances of ``x`` (N, D) from ``mean`` (D,) under the covariance L L^T given by its
    lower Cholesky factor ``chol`` (D, D); computed in float64 by a triangular solve."""
    diff = (x.double() - mean.to(x.device, torch.float64)).T
    z = torch.linalg.solve_triangular(chol.to(x.device, torch.float64), diff, upper=False)
    return z.norm(dim=0)


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of scores that should be higher on ``positives`` (P,) (e.g. shifted episodes)
    than on ``negatives`` (N,) (in-distribution): P(pos > neg) + 0.5 P(pos == neg), the Mann-Whitney U over
    P * N, from average ranks (ties share the mean of their ranks). 1 = perfect, 0.5 = chance."""
    neg, pos = torch.as_tensor(negatives).double().flatten(), torch.as_tensor(positives).double().flatten()
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError(f"AUROC needs scores of both classes, got {neg.numel()} negatives, {pos.numel()} positives")
    both = torch.cat([neg, pos])
    if not bool(torch.isfinite(both).all()):
        raise ValueError("AUROC scores must be finite; drop episodes without a score first")
    _, inverse, counts = torch.unique(both, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # mean of the 1-based ranks end-count+1 .. end
    rank_sum = avg_rank[inverse][neg.numel():].sum()
    n_pos, n_neg = pos.numel(), neg.numel()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def episode_scores(call_scores: torch.Tensor, valid: torch.Tensor, *, quantile: float | None = None
                   ) -> torch.Tensor:
    """(B,) one score per episode from the per-call scores (B, T) of its valid calls (``valid`` (B, T) bool):
    the max, or the ``quantile`` (e.g. 0.9) when given. Rows without a valid call score NaN."""
    if call_scores.shape != valid.shape:
        raise ValueError(f"call_scores {tuple(call_scores.shape)} and valid {tuple(valid.shape)} differ in shape")
    if quantile is None:
        out = torch.where(valid, call_scores, torch.full_like(call_scores, -torch.inf)).max(1).values
    else:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile}")
        out = torch.nanquantile(torch.where(valid, call_scores, torch.full_like(call_scores, torch.nan)),
                                quantile, dim=1)
    return torch.where(valid.any(1), out, torch.full_like(out, torch.nan))


# ------------------------------------------------------------------------------------------ the detector


@dataclass
class OODConfig:
    """How an ``OODDetector`` is fitted: ``quantile`` of held-out in-distribution scores that becomes the
    threshold, the share of episodes held out, the covariance shrinkage (None = Ledoit-Wolf), the most frames
    used to fit and to calibrate (evenly drawn, seeded), and the seed of the episode split."""

    quantile: float = 0.99
    heldout_fraction: float = 0.2
    shrinkage: float | None = None
    max_frames: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"OOD quantile must be in [0.5, 1), got {self.quantile} (0.99 flags ~1% of "
                             "in-distribution frames)")
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"OOD shrinkage must be in [0, 1] or None (Ledoit-Wolf), got {self.shrinkage}")
        if self.max_frames < 2:
            raise ValueError(f"OOD max_frames must be >= 2, got {self.max_frames}")


def _subsample(frames: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if len(frames) <= limit:
        return frames
    keep = torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:limit]
    return frames[keep.sort().values]


class OODDetector:
    """A Gaussian of the policy's features with a calibrated Mahalanobis threshold (see the module docstring).

    ``mean`` (D,), ``covariance`` (D, D) and ``threshold``; ``meta`` records how it was fitted (sizes, shrinkage,
    quantile, held-out flag rate, the policy's fingerprint)."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, threshold: float, meta: dict[str, Any]):
        d = mean.shape[0]
        if mean.dim() != 1 or covariance.shape != (d, d):
            raise ValueError(f"OOD detector: mean {tuple(mean.shape)} and covariance {tuple(covariance.shape)} do "
                             f"not fit each other; {REFIT}")
        self.mean, self.covariance = mean.double().cpu(), covariance.double().cpu()
        self.threshold, self.meta = float(threshold), dict(meta)
        chol, info = torch.linalg.cholesky_ex(self.covariance)
        if int(info):
            raise ValueError(f"OOD detector: the covariance is not positive definite; the detector is corrupt: {REFIT}")
        self.chol = chol

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit_features(cls, fit: torch.Tensor, heldout: torch.Tensor, config: OODConfig | None = None,
                     meta: dict[str, Any] | None = None) -> OODDetector:
        """Fit on features ``fit`` (N, D) and set the threshold at ``config.quantile`` of the scores of the
        held-out in-distribution features ``heldout`` (M, D)."""
        config = config or OODConfig()
        if heldout.dim() != 2 or heldout.shape[0] < 1 or heldout.shape[1] != fit.shape[-1]:
            raise ValueError(f"held-out features must be (M >= 1, {fit.shape[-1]}), got {tuple(heldout.shape)}")
        mean, cov, shrink = shrunk_gaussian(fit, config.shrinkage)
        det = cls(mean, cov, 0.0, {})
        held = det.score_features(heldout)
        det.threshold = float(torch.quantile(held, config.quantile))
        det.meta = {**(meta or {}), "dim": det.dim, "quantile": config.quantile, "shrinkage": shrink,
                    "num_fit_frames": int(fit.shape[0]), "num_heldout_frames": int(heldout.shape[0]),
                    "heldout_flag_rate": float((held > det.threshold).double().mean()),
                    "heldout_median_score": float(held.median())}
        return det

    @classmethod
    def fit(cls, policy: Policy, dataset: DemoDataset, config: OODConfig | None = None, *, batch_size: int = 256,
            features: torch.Tensor | None = None) -> OODDetector:
        """Fit on ``dataset``'s training episodes and calibrate on its held-out episodes (``features`` (F, D):
        precomputed features of every frame, to share them with the progress head)."""
        config = config or OODConfig()
        fit_eps, held_eps = split_episodes(dataset.num_episodes, config.heldout_fraction, config.seed)
        fit_frames = _subsample(episode_frames(dataset, fit_eps), config.max_frames, config.seed)
        held_frames = _subsample(episode_frames(dataset, held_eps), config.max_frames, config.seed + 1)

        def feats(frames: torch.Tensor) -> torch.Tensor:
            if features is not None:
                return features[frames]
            return dataset_features(policy, dataset, frames, batch_size=batch_size)

        meta = {"d_model": policy.config.d_model, "state_dim": policy.config.state_dim,
                "policy_fingerprint": policy_fingerprint(policy), "dataset": str(dataset.root),
                "fit_episodes": fit_eps.tolist(), "heldout_episodes": held_eps.tolist(), "seed": config.seed}
        det = cls.fit_features(feats(fit_frames), feats(held_frames), config, meta)
        log.info("OOD detector: %d fit / %d held-out frames, shrinkage %.3f, threshold %.3f (held-out flag rate "
                 "%.3f)", det.meta["num_fit_frames"], det.meta["num_heldout_frames"], det.meta["shrinkage"],
                 det.threshold, det.meta["heldout_flag_rate"])
        return det

    # -------------------------------------------------------------- scoring

    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) float32 Mahalanobis distances of features (B, D), on their device."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"the OOD detector scores ({self.dim},)-dim features, got {tuple(features.shape)}; "
                             f"it was fitted on another policy: {REFIT}")
        return mahalanobis(features, self.mean, self.chol).float()

    def score(self, policy: Policy, obs: Observation) -> torch.Tensor:
        """(B,) OOD scores of a batch of observations under ``policy``."""
        self.check_policy(policy, fingerprint=False)
        return self.score_features(policy_features(policy, obs))

    def flag_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the score is above the calibrated threshold."""
        return self.score_features(features) > self.threshold

    def flag(self, policy: Policy, obs: Observation) -> torch.Tensor:
        """(B,) bool: which observations look out of distribution to ``policy``."""
        return self.score(policy, obs) > self.threshold

    def check_policy(self, policy: Policy, *, fingerprint: bool = True) -> None:
        """Refuse a policy of other feature sizes; warn when its weights differ from the fitted policy's."""
        c = policy.config
        want = (self.meta.get("d_model"), self.meta.get("state_dim"))
        if feature_dim(policy) != self.dim or (want[0] is not None and want != (c.d_model, c.state_dim)):
            raise ValueError(f"the OOD detector was fitted on a policy with d_model={want[0]}, state_dim={want[1]}; "
                             f"this one has d_model={c.d_model}, state_dim={c.state_dim}: {REFIT}")
        if fingerprint and self.meta.get("policy_fingerprint") not in (None, policy_fingerprint(policy)):
            log.warning("the OOD detector was fitted on other policy weights; its scores mean little for this "
                        "policy: %s", REFIT)

    # -------------------------------------------------------------- save / load

    def save(self, path: str | Path) -> Path:
        """Write ``monitor.json`` + ``monitor.safetensors`` into the folder ``path`` (atomically)."""
        return write_monitor(path, KIND, {"mean": self.mean, "covariance": self.covariance},
                             {**self.meta, "threshold": self.threshold})

    @classmethod
    def load(cls, path: str | Path) -> OODDetector:
        """Read a detector written by ``save``; a corrupt or foreign folder is a ``ValueError``."""
        tensors, meta = read_monitor(path, KIND)
        threshold = meta_number(meta, "threshold", path)
        d = int(meta_number(meta, "dim", path, integer=True))
        check_tensors(tensors, {"mean": (d,), "covariance": (d, d)}, path, KIND)
        return cls(tensors["mean"], tensors["covariance"], threshold, meta)
