"""Metric logging: a JSONL file always, TensorBoard event files when tensorboard is installed."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from reinforge.fsutil import write_text_atomic

log = logging.getLogger(__name__)


class MetricLogger:
    """Writes flat, namespaced metrics (``train/loss``, ``eval/spatial/success_rate``) per step."""

    def __init__(self, out: str | Path, tensorboard: bool = True, wandb_project: str | None = None,
                 wandb_config: dict | None = None, keep_until: int | None = None):
        """``keep_until``: drop rows of an existing metrics.jsonl logged after that step (a resumed run
        repeats them)."""
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ImportError("W&B logging needs the wandb package: pip install wandb "
                                  "(or set wandb=false)") from None
            self.wandb = wandb.init(project=wandb_project, config=wandb_config, dir=str(out), resume="allow")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.jsonl"
        if keep_until is not None and path.is_file():
            rows = [r for r in path.read_text().splitlines() if r.strip()]
            keep = [r for r in rows if _step_of(r) <= keep_until]
            if len(keep) != len(rows):
                write_text_atomic(path, "".join(r + "\n" for r in keep))
        self.jsonl = path.open("a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # a resumed run drops the TensorBoard events logged after its checkpoint, as it does the rows
                purge = None if keep_until is None else keep_until + 1
                self.tb = SummaryWriter(str(self.out / "tb"), purge_step=purge)
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only (pip install tensorboard)")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)
        if self.wandb is not None:
            self.wandb.log({k: float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self.jsonl.closed:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")  # a torn last line of a killed run


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl (a torn last line of a killed run is skipped)."""
    p = Path(path)
    rows = []
    for line in p.read_text().splitlines() if p.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
