"""Fit both monitors of a policy from its demonstrations into one folder, and load them back.

``DIR/ood/`` holds the ``OODDetector``, ``DIR/progress/`` the ``ProgressHead`` (each a monitor folder, see
``storage.py``). The policy's features of every frame are computed once and shared by both fits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from reinforge.data import DemoDataset
from reinforge.monitor.features import dataset_features
from reinforge.monitor.ood import OODConfig, OODDetector
from reinforge.monitor.progress import ProgressConfig, ProgressHead, fit_progress
from reinforge.monitor.storage import META_NAME
from reinforge.policies import Policy

log = logging.getLogger(__name__)

OOD_DIR, PROGRESS_DIR = "ood", "progress"
Which = Literal["both", "ood", "progress"]


def fit_monitors(policy: Policy, dataset: DemoDataset, out: str | Path, *, what: Which = "both",
                 ood_config: OODConfig | None = None, progress_config: ProgressConfig | None = None,
                 batch_size: int = 256) -> dict[str, Any]:
    """Fit the OOD detector and / or the progress head of the frozen ``policy`` on ``dataset`` and save them under
    ``out``; returns their fitting facts (``{"ood": {...}, "progress": {...}}``)."""
    if what not in ("both", "ood", "progress"):
        raise ValueError(f"what must be 'both', 'ood' or 'progress', got {what!r}")
    feats = dataset_features(policy, dataset, batch_size=batch_size)
    out = Path(out)
    summary: dict[str, Any] = {}
    if what in ("both", "ood"):
        det = OODDetector.fit(policy, dataset, ood_config, features=feats)
        det.save(out / OOD_DIR)
        summary["ood"] = {k: det.meta[k] for k in ("num_fit_frames", "num_heldout_frames", "shrinkage",
                                                   "heldout_flag_rate", "heldout_median_score")}
        summary["ood"]["threshold"] = det.threshold
    if what in ("both", "progress"):
        head = fit_progress(policy, dataset, progress_config, features=feats)
        head.save(out / PROGRESS_DIR)
        summary["progress"] = {k: head.meta[k] for k in ("val_mse", "baseline_mse", "val_mae", "val_end_accuracy",
                                                         "train_loss")}
    return summary


def load_monitors(path: str | Path) -> tuple[ProgressHead | None, OODDetector | None]:
    """The monitors saved under ``path`` by ``fit_monitors`` (None for one that is absent)."""
    path = Path(path)
    has = {name: (path / name / META_NAME).is_file() for name in (PROGRESS_DIR, OOD_DIR)}
    if not any(has.values()):
        raise ValueError(f"{path} holds no monitors ({PROGRESS_DIR}/ or {OOD_DIR}/); fit them with "
                         f"`reinforge monitor fit --policy P --data D --out {path}`")
    progress = ProgressHead.load(path / PROGRESS_DIR) if has[PROGRESS_DIR] else None
    ood = OODDetector.load(path / OOD_DIR) if has[OOD_DIR] else None
    return progress, ood
