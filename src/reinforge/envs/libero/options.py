"""Options of the LIBERO adapter in the ``env`` config section (importable without LIBERO installed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from reinforge.config import check

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# the adapter's layout (see env.py), also what imported LIBERO demonstrations are recorded with
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "finger_left", "finger_right")
CAMERAS = ("agentview", "robot0_eye_in_hand")
CONTROL_HZ = 20


def libero_layout(suite: str) -> dict:
    """The layout a dataset of ``suite`` records (as ``EnvSpec.layout`` would give it), without building an env."""
    return {"env": "libero", "suite": suite, "action_names": list(ACTION_NAMES), "state_names": list(STATE_NAMES),
            "camera_names": list(CAMERAS), "control_hz": CONTROL_HZ, "embodiment": "franka"}


def libero_task_ids(suite: str) -> dict[str, int]:
    """Instruction -> task id in LIBERO's order of ``suite``; empty where LIBERO is not installed."""
    try:
        from reinforge.envs.libero.worker import load_suite

        bench = load_suite(suite)
    except Exception:
        return {}
    return {t.language: i for i, t in enumerate(bench.tasks)}


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
