"""Options of the built-in tabletop world in the ``env`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinforge.config import check


@dataclass
class TabletopOptions:
    render: bool = True  # render camera images (off: state-only, for benchmarks)
    render_backend: Literal["auto", "numba", "torch"] = "auto"  # numba on CPU; torch runs on any device
    # "real": the documented visual + dynamics shift (domain.py); "real-<component>" one part of it alone
    domain: Literal["sim", "real", "real-camera", "real-colour", "real-noise", "real-gain", "real-latency",
                    "real-grasp"] = "sim"

    def __post_init__(self) -> None:
        check(self.render_backend in ("auto", "numba", "torch"), "env.render_backend", self.render_backend,
              "must be auto|numba|torch")
