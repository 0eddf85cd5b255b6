"""Options of the LIBERO adapter in the ``env`` config section (importable without LIBERO installed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from reinforge.config import check

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(num_workers: int, num_envs: int) -> int:
    """The worker processes ``num_envs`` envs run in: ``num_workers`` (0 = one per CPU core), at most one per env."""
    return max(1, min(num_workers or cpu_cores(), num_envs))


@dataclass
class LiberoOptions:
    # "default": LIBERO's own look (shadows, multisampling); "fast": shadows and multisampling off (2-10x faster
    # software rendering on CPU, but a different look: do not mix the two between training and evaluation)
    render_quality: Literal["default", "fast"] = "default"
    # worker processes; 0 = one per CPU core (at most one per env). Each worker steps num_envs / num_workers envs
    # one after the other; a worker costs ~1.2 GB on top of its envs' ~0.8 GB each (see LiberoEnv.memory_estimate)
    num_workers: int = 0
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
    worker_timeout_s: float = 300.0  # a worker that does not answer in time is killed and restarted
    max_restarts: int = 10  # per worker; past it the run stops with an error
    settle_steps: int = 10  # no-op steps after setting an initial state (objects settle), as the RL papers do

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        check(self.render_quality in ("default", "fast"), "env.render_quality", self.render_quality,
              "must be 'default' or 'fast'")
        check(self.num_workers >= 0, "env.num_workers", self.num_workers, "must be >= 0 (0 = one per CPU core)")
        check(len(self.cameras) >= 1, "env.cameras", self.cameras, "must name at least one camera")
        check(self.worker_timeout_s > 0, "env.worker_timeout_s", self.worker_timeout_s, "must be > 0")
        check(self.max_restarts >= 0, "env.max_restarts", self.max_restarts, "must be >= 0")
        check(self.settle_steps >= 0, "env.settle_steps", self.settle_steps, "must be >= 0")
