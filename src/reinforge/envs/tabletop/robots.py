"""The robots of the built-in tabletop world: native actions -> the world's gripper motion, proprio state, and
the scripted expert's cartesian commands -> native actions.

The world moves one gripper (``world.step_world`` takes a LIBERO-style command: translation and yaw deltas in units
of the maximum step, a gripper command); each robot drives it through its own kinematics and command convention,
so the same task needs different action sequences on each. The gripper pose in the world state is the truth:
joint readings are derived from it (inverse kinematics), so snapshots and resets need nothing robot-specific.

- ``franka`` (cartesian, 7-dim, the default): LIBERO's layout, the world's own command.
- ``scara`` (joint, 5-dim): a SCARA arm with its base left of the table (x = -0.45 m, y = 0), links of 0.45 and
  0.40 m turned by the shoulder and elbow joints (elbow angle kept in (0, pi): one arm configuration), a prismatic
  lift for the height and a wrist joint; actions are joint-position deltas (at most 0.025 / 0.04 rad, 0.02 m and
  0.15 rad per step), forward kinematics gives the gripper's new pose.
- ``widowx`` (cartesian, 5-dim): translation at 0.6x the franka's top speed, yaw only, and a position-controlled
  gripper: the last action is the target opening (+1 open, -1 closed; the opposite sign of the franka's close
  command), reached at half the franka's finger speed.

Each robot's layout and its unified-space slots are in ``reinforge.envs.embodiment``.
"""

from __future__ import annotations

import math

import torch

from reinforge.envs.embodiment import Embodiment, get_embodiment
from reinforge.envs.tabletop.world import GRIPPER_RATE, MAX_STEP, MAX_YAW_STEP, WorldState


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


class TabletopRobot:
    """The franka: the world's own command (LIBERO layout)."""

    name = "franka"
    gripper_rate = GRIPPER_RATE

    @property
    def embodiment(self) -> Embodiment:
        return get_embodiment(self.name)

    def neutral_action(self) -> torch.Tensor:
        """(D,) stay still with the gripper open."""
        return torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])

    def world_action(self, a: torch.Tensor, s: WorldState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Native actions (B, D) in [-1, 1] -> the world's command (B, 7) and an optional gripper target
        opening (B,) in [0, 1] (None: the command's sign closes or opens)."""
        return a, None

    def proprio(self, s: WorldState) -> torch.Tensor:
        """(B, 8) eef xyz, axis-angle of a downward gripper with yaw, finger positions."""
        half = 0.5 * s.grip_yaw
        aa = torch.stack([math.pi * torch.cos(half), math.pi * torch.sin(half), torch.zeros_like(half)], -1)
        finger = 0.04 * s.grip_open
        return torch.cat([s.grip_pos, aa, finger[:, None], -finger[:, None]], -1)

    def native_action(self, w: torch.Tensor, s: WorldState) -> torch.Tensor:
        """The world command (B, 7) an expert wants -> this robot's native action (B, D) in [-1, 1]."""
        return w.clamp(-1, 1)


class ScaraRobot(TabletopRobot):
    name = "scara"
    BASE = (-0.45, 0.0)
    L1, L2 = 0.45, 0.40
    JOINT_STEP = (0.025, 0.04, MAX_STEP, MAX_YAW_STEP)  # per step at |action| = 1
    ELBOW_MIN = 0.05  # the elbow stays in [min, pi - min]: one configuration, away from the straight-arm singularity

    def neutral_action(self) -> torch.Tensor:
        return torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0])

    def inverse(self, pos: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """(B, 4) joints (shoulder, elbow, lift, wrist) of a gripper at ``pos`` (B, 3) with ``yaw`` (B,); points out
        of reach map to the nearest reachable ones."""
        dx, dy = pos[:, 0] - self.BASE[0], pos[:, 1] - self.BASE[1]
        c2 = (dx**2 + dy**2 - self.L1**2 - self.L2**2) / (2 * self.L1 * self.L2)
        q2 = torch.acos(c2.clamp(-1.0, 1.0)).clamp(self.ELBOW_MIN, math.pi - self.ELBOW_MIN)
        q1 = torch.atan2(dy, dx) - torch.atan2(self.L2 * torch.sin(q2), self.L1 + self.L2 * torch.cos(q2))
        return torch.stack([_wrap(q1), q2, pos[:, 2], _wrap(yaw - q1 - q2)], -1)

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gripper position (B, 3) and yaw (B,) of joints ``q`` (B, 4)."""
        q1, q2 = q[:, 0], q[:, 1]
        x = self.BASE[0] + self.L1 * torch.cos(q1) + self.L2 * torch.cos(q1 + q2)
        y = self.BASE[1] + self.L1 * torch.sin(q1) + self.L2 * torch.sin(q1 + q2)
        return torch.stack([x, y, q[:, 2]], -1), _wrap(q1 + q2 + q[:, 3])

    def world_action(self, a, s):
        step = torch.tensor(self.JOINT_STEP, device=a.device)
        q = self.inverse(s.grip_pos, s.grip_yaw)
        q_new = q + a[:, :4] * step
        q_new[:, 1] = q_new[:, 1].clamp(self.ELBOW_MIN, math.pi - self.ELBOW_MIN)
        p0, yaw0 = self.forward(q)
        p1, yaw1 = self.forward(q_new)
        w = torch.zeros(a.shape[0], 7, device=a.device)
        w[:, :3] = (p1 - p0) / MAX_STEP
        w[:, 5] = _wrap(yaw1 - yaw0) / MAX_YAW_STEP
        w[:, 6] = a[:, 4]
        return w, None

    def proprio(self, s):
        return torch.cat([self.inverse(s.grip_pos, s.grip_yaw), s.grip_open[:, None]], -1)

    def native_action(self, w, s):
        q = self.inverse(s.grip_pos, s.grip_yaw)
        target = self.inverse(s.grip_pos + w[:, :3].clamp(-1, 1) * MAX_STEP,
                              s.grip_yaw + w[:, 5].clamp(-1, 1) * MAX_YAW_STEP)
        dq = target - q
        dq[:, 0], dq[:, 3] = _wrap(dq[:, 0]), _wrap(dq[:, 3])
        a = dq / torch.tensor(self.JOINT_STEP, device=w.device)
        return torch.cat([a, w[:, 6:7]], -1).clamp(-1, 1)


class WidowXRobot(TabletopRobot):
    name = "widowx"
    SPEED = 0.6  # translation at |action| = 1, as a fraction of the world's maximum step
    gripper_rate = GRIPPER_RATE / 2

    def neutral_action(self) -> torch.Tensor:
        return torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])

    def world_action(self, a, s):
        w = torch.zeros(a.shape[0], 7, device=a.device)
        w[:, :3] = a[:, :3] * self.SPEED
        w[:, 5] = a[:, 3]
        return w, (a[:, 4] + 1) / 2

    def proprio(self, s):
        half = 0.5 * s.grip_yaw
        zero = torch.zeros_like(half)
        quat = torch.stack([zero, torch.cos(half), torch.sin(half), zero], -1)  # a pi turn about (cos h, sin h, 0)
        return torch.cat([s.grip_pos, quat, s.grip_open[:, None]], -1)

    def native_action(self, w, s):
        return torch.cat([w[:, :3] / self.SPEED, w[:, 5:6], -w[:, 6:7]], -1).clamp(-1, 1)


ROBOTS: dict[str, type[TabletopRobot]] = {"franka": TabletopRobot, "scara": ScaraRobot, "widowx": WidowXRobot}


def make_robot(name: str) -> TabletopRobot:
    if name not in ROBOTS:
        raise ValueError(f"the tabletop world has no robot {name!r}; choose one of {sorted(ROBOTS)}")
    return ROBOTS[name]()
