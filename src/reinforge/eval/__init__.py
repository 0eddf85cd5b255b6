"""Evaluation: success rates per task / suite / held-out split, videos."""

from __future__ import annotations

from reinforge.eval.actors import RandomActor, load_actor
from reinforge.eval.evaluate import EvalResult, evaluate

__all__ = ["EvalResult", "RandomActor", "evaluate", "load_actor"]
