"""Options of the built-in tabletop world in the ``env`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reinforge.config import check
from reinforge.envs.tabletop.perturb import PERTURBATIONS, Perturbation


@dataclass
class TabletopOptions:
    render: bool = True  # render camera images (off: state-only, for benchmarks)
    # auto: numba on CPU, triton on CUDA (when installed, else torch); torch runs on any device
    render_backend: Literal["auto", "numba", "torch", "triton"] = "auto"
    # "real": the documented visual + dynamics shift (domain.py); "real-<component>" one part of it alone
    domain: Literal["sim", "real", "real-camera", "real-colour", "real-noise", "real-gain", "real-latency",
                    "real-grasp"] = "sim"
    # robustness evaluation (perturb.py): "" none; "<what>_<level>" with what = object (the object to manipulate),
    # goal (its receptacle), robot (initial end-effector pose) or combined (all three); level minor/major:
    # objects shift 0.03/0.06 m in the plane; the end effector moves 0.03/0.06 m and its yaw turns 0.25/0.5 rad
    perturb: Perturbation = ""
    # False: reaching the goal does not end the episode (it runs to max_episode_steps; ``success`` still reports
    # the goal each step): the policy must stop on its own, as a real robot with no success oracle must
    end_on_success: bool = True
    # the robot (robots.py; layouts in `reinforge embodiments`): franka (cartesian, LIBERO's 7-dim layout),
    # scara (joint-space, 5-dim), widowx (cartesian, position-controlled gripper, 5-dim)
    embodiment: str = "franka"
    # sleep this long per executed env step: stands in for a slow simulator (LIBERO with cameras: ~100-300 ms per
    # step and process) in scaling benchmarks (`reinforge bench rl --ray`); 0 = the world's own speed
    step_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        check(self.step_delay_ms >= 0, "env.step_delay_ms", self.step_delay_ms, "must be >= 0")
        check(self.render_backend in ("auto", "numba", "torch", "triton"), "env.render_backend", self.render_backend,
              "must be auto|numba|torch|triton")
        check(self.perturb in ("", *PERTURBATIONS), "env.perturb", self.perturb,
              f"must be empty (none) or one of {list(PERTURBATIONS)}")
        from reinforge.envs.tabletop.robots import ROBOTS

        check(self.embodiment in ROBOTS, "env.embodiment", self.embodiment, f"must be one of {sorted(ROBOTS)}")
