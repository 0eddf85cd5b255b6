"""Embodiments and the unified action space (Green-VLA, arXiv 2602.00919; METHODS.md section 7).

An ``Embodiment`` names a robot's native action and state layout (one name per dimension), its control mode
(``cartesian``: end-effector deltas; ``joint``: joint-position deltas) and where each native dimension goes in
ONE fixed-width vector of ``UNIFIED_DIM`` = 64 semantic slots, Green-VLA's released layout (48 of 64 used)::

    0-6   left / single arm joints        21-26 right hand
    7-12  left hand                       27    right gripper
    13    left / single gripper           28-31 torso
    14-20 right arm joints                32-34 head
    35-37 end-effector xyz (position in the state, translation delta in the action)
    38-41 end-effector orientation (state: axis-angle or quaternion)
    42-44 end-effector rotation delta (action)
    45-47 extra

``to_unified`` scatters native vectors into the 64 slots (zeros elsewhere) and ``slot_mask`` says which slots an
embodiment fills: a policy trained in the unified space on several embodiments masks its loss to the filled slots
and reads its native actions back with ``from_unified``. The index maps carry values as they are: slot 13 holds
each robot's own gripper command convention; the prompt tag (``[joint] [scara]``) tells the policy which robot
it drives.

Simulators declare their embodiment in ``EnvSpec.embodiment``; datasets record it. Registering one::

    register_embodiment(Embodiment("myarm", "joint", action_names=(...), state_names=(...),
                                   action_slots=(...), state_slots=(...), description="..."))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

UNIFIED_DIM = 64
ControlMode = Literal["cartesian", "joint"]

# slot groups of the unified vector: name -> (first, last) inclusive
SLOT_GROUPS: dict[str, tuple[int, int]] = {
    "arm_joints": (0, 6), "left_hand": (7, 12), "gripper": (13, 13), "right_arm_joints": (14, 20),
    "right_hand": (21, 26), "right_gripper": (27, 27), "torso": (28, 31), "head": (32, 34),
    "eef_xyz": (35, 37), "eef_orientation": (38, 41), "eef_rotation_delta": (42, 44), "extra": (45, 47),
}


def slot_name(i: int) -> str:
    """The semantic name of unified slot ``i`` (``eef_xyz[1]``), or ``unused``."""
    for name, (lo, hi) in SLOT_GROUPS.items():
        if lo <= i <= hi:
            return name if lo == hi else f"{name}[{i - lo}]"
    return "unused"


@dataclass(frozen=True)
class Embodiment:
    """A robot's native layout and its map into the unified space.

    ``action_slots[k]`` / ``state_slots[k]``: the unified slot of native action / state dimension ``k``.
    """

    name: str
    control_mode: ControlMode
    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    action_slots: tuple[int, ...]
    state_slots: tuple[int, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if self.control_mode not in ("cartesian", "joint"):
            raise ValueError(f"embodiment {self.name!r}: control_mode must be cartesian|joint, got "
                             f"{self.control_mode!r}")
        for kind, names, slots in (("action", self.action_names, self.action_slots),
                                   ("state", self.state_names, self.state_slots)):
            if len(names) != len(slots):
                raise ValueError(f"embodiment {self.name!r}: {len(names)} {kind} names but {len(slots)} slots")
            if len(set(slots)) != len(slots) or not all(0 <= s < UNIFIED_DIM for s in slots):
                raise ValueError(f"embodiment {self.name!r}: {kind} slots {slots} must be distinct and in "
                                 f"0..{UNIFIED_DIM - 1}")

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def prompt_tag(self) -> str:
        """What goes before the instruction in a multi-embodiment policy's prompt."""
        return f"[{self.control_mode}] [{self.name}]"

    def slots(self, kind: Literal["action", "state"]) -> tuple[int, ...]:
        if kind not in ("action", "state"):
            raise ValueError(f"kind must be 'action' or 'state', got {kind!r}")
        return self.action_slots if kind == "action" else self.state_slots

    def slot_mask(self, kind: Literal["action", "state"]) -> torch.Tensor:
        """(64,) bool: the unified slots this embodiment fills."""
        m = torch.zeros(UNIFIED_DIM, dtype=torch.bool)
        m[list(self.slots(kind))] = True
        return m

    def to_unified(self, x: torch.Tensor, kind: Literal["action", "state"]) -> torch.Tensor:
        """Native (..., D) -> unified (..., 64), zeros in the slots this embodiment does not fill."""
        slots = self.slots(kind)
        if x.shape[-1] != len(slots):
            raise ValueError(f"embodiment {self.name!r} has {len(slots)} {kind} dims, got a vector of "
                             f"{x.shape[-1]}")
        out = x.new_zeros(*x.shape[:-1], UNIFIED_DIM)
        out[..., list(slots)] = x
        return out

    def from_unified(self, u: torch.Tensor, kind: Literal["action", "state"]) -> torch.Tensor:
        """Unified (..., 64) -> native (..., D): the slots this embodiment reads."""
        if u.shape[-1] != UNIFIED_DIM:
            raise ValueError(f"expected unified vectors of {UNIFIED_DIM} dims, got {u.shape[-1]}")
        return u[..., list(self.slots(kind))]

    def describe(self) -> dict[str, object]:
        """The layout as stored in datasets and listed by ``reinforge embodiments``."""
        return {"embodiment": self.name, "control_mode": self.control_mode,
                "action_slots": list(self.action_slots), "state_slots": list(self.state_slots)}


_EMBODIMENTS: dict[str, Embodiment] = {}


def register_embodiment(e: Embodiment) -> None:
    """Register an embodiment; refuses to overwrite an existing name."""
    if e.name in _EMBODIMENTS:
        raise ValueError(f"embodiment {e.name!r} is already registered")
    _EMBODIMENTS[e.name] = e


def get_embodiment(name: str) -> Embodiment:
    if name not in _EMBODIMENTS:
        raise ValueError(f"unknown embodiment {name!r}; registered: {sorted(_EMBODIMENTS)} (list them with "
                         "`reinforge embodiments`)")
    return _EMBODIMENTS[name]


def registered_embodiments() -> dict[str, Embodiment]:
    return dict(_EMBODIMENTS)


# ---------------------------------------------------------------------------------------------- built-in robots
_EEF_XYZ, _EEF_ORI, _EEF_ROT = (35, 36, 37), (38, 39, 40, 41), (42, 43, 44)

# LIBERO's layout: the built-in world's default robot and LIBERO's Panda
register_embodiment(Embodiment(
    "franka", "cartesian",
    action_names=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
    state_names=("eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
                 "finger_left", "finger_right"),
    action_slots=(*_EEF_XYZ, *_EEF_ROT, 13), state_slots=(*_EEF_XYZ, *_EEF_ORI[:3], 13, 45),
    description="7-DoF arm under end-effector delta control (LIBERO convention): translation and rotation "
                "deltas, gripper -1 open / +1 close (a velocity command, 4 steps to close)"))
# the built-in world's joint-space arm: a SCARA (two revolute links in the plane, a prismatic lift, a wrist)
register_embodiment(Embodiment(
    "scara", "joint",
    action_names=("dq_shoulder", "dq_elbow", "dz_lift", "dq_wrist", "gripper"),
    state_names=("q_shoulder", "q_elbow", "z_lift", "q_wrist", "gripper_open"),
    action_slots=(0, 1, 2, 3, 13), state_slots=(0, 1, 2, 3, 13),
    description="4-joint SCARA arm under joint-position delta control: shoulder and elbow turn two 0.45/0.40 m "
                "links in the plane from a base left of the table, a prismatic lift sets the height, the wrist "
                "turns the gripper; gripper -1 open / +1 close"))
# the built-in world's small cartesian arm with a position-controlled gripper
register_embodiment(Embodiment(
    "widowx", "cartesian",
    action_names=("dx", "dy", "dz", "dyaw", "gripper_position"),
    state_names=("eef_x", "eef_y", "eef_z", "eef_qw", "eef_qx", "eef_qy", "eef_qz", "gripper_open"),
    action_slots=(*_EEF_XYZ, 44, 13), state_slots=(*_EEF_XYZ, *_EEF_ORI, 13),
    description="small 5-DoF arm under end-effector delta control at 0.6x the speed, yaw only; the gripper "
                "takes an absolute target opening (+1 open, -1 closed) and moves half as fast"))
# MetaWorld's Sawyer
register_embodiment(Embodiment(
    "sawyer", "cartesian", action_names=("dx", "dy", "dz", "gripper"),
    state_names=("eef_x", "eef_y", "eef_z", "gripper_opening"),
    action_slots=(*_EEF_XYZ, 13), state_slots=(*_EEF_XYZ, 13),
    description="MetaWorld's Sawyer: end-effector translation deltas and a gripper effort"))
