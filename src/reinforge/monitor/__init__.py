"""Safety monitors of Green-VLA (arXiv 2602.00919) for any trained reinforge policy, on its frozen features:

- ``OODDetector`` (ood.py): a shrinkage Gaussian of the policy's features, Mahalanobis scores, a threshold
  calibrated on held-out demonstrations; ``auroc`` to measure it against the env's shifts.
- ``ProgressHead`` (progress.py): an MLP predicting the fraction of the episode done and "episode end".
- ``evaluate_monitored`` (evaluate.py): greedy evaluation in which the progress head stops episodes (the env no
  longer ends them on success) and the OOD detector scores them.
- ``fit_monitors`` / ``load_monitors`` (fit.py): both monitors of a policy in one folder.
"""

from __future__ import annotations

from reinforge.monitor.evaluate import (
    TABLETOP_SHIFTS,
    MonitoredResult,
    StopRule,
    evaluate_monitored,
    shift_aurocs,
    shifted_env_config,
)
from reinforge.monitor.features import policy_features
from reinforge.monitor.fit import fit_monitors, load_monitors
from reinforge.monitor.ood import OODConfig, OODDetector, auroc, episode_scores
from reinforge.monitor.progress import ProgressConfig, ProgressHead, fit_progress

__all__ = ["TABLETOP_SHIFTS", "MonitoredResult", "OODConfig", "OODDetector", "ProgressConfig", "ProgressHead",
           "StopRule", "auroc", "episode_scores", "evaluate_monitored", "fit_monitors", "fit_progress",
           "load_monitors", "policy_features", "shift_aurocs", "shifted_env_config"]
