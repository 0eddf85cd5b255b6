"""Perturbed initial states of the tabletop world, for robustness evaluation as in VLA-RFT (arXiv 2510.00406):
the object to manipulate, the goal receptacle or the robot's initial state moves away from where the fixed
initial states put it, by a minor or a major amount, or all three at once (``combined_*``).

What moves, read from each task's goal predicates ``(pred, a, b)``:

- ``object_*``: the objects named as ``a``; a drawer is moved by moving its cabinet. An object that rests on
  another one (the black bowl on the cheese box in spatial) moves with what is under it: moving it alone
  would leave it hanging over the edge.
- ``goal_*``: the receptacles, ``b`` of the ``on``/``in`` terms (a drawer again by its cabinet). An object
  that is both (the drawer that is opened and then filled in long) counts as the goal. Tasks without a
  receptacle (open/close a drawer, push into a region) have no goal to move: ``goal_*`` leaves them as they are.
- ``robot_*``: the initial end-effector position and gripper yaw. Nothing in the world depends on the yaw (grasps
  do not, and the scripted expert never turns the gripper back): it shows in the images and the proprio state.

Each moved stack (an object with whatever rests on or in it, a cabinet with its drawer) shifts as one, in its
own direction, so support relations and heights stay as they were; only x and y change.

Magnitudes (metres, radians):

=========  ============================================  ==============================================
level      object / goal: planar shift of fixed length   robot: end-effector offset; gripper yaw offset
=========  ============================================  ==============================================
minor      0.03                                          0.03 (z part within +-0.015); +-0.25
major      0.06                                          0.06 (z part within +-0.03); +-0.5
=========  ============================================  ==============================================

For reference: the fixed initial states jitter positions by 1.2 cm, a bowl is 9 cm across. The gripper starts
20 cm above the table, so the robot offset never brings it near an object.

Directions are drawn from a generator seeded by (suite, split, bank, component and level, task id, init id),
so the same ``(task, init_id)`` always gives the same perturbed scene, whatever the env's seed or batch layout.
A shift takes the first of ``MAX_TRIES`` drawn directions that keeps the stack on the table (the rule of the
fixed initial states), ``_GAP`` clear of every other object, and short of the region a push task must reach
(the task would be solved at reset); in tasks that open or fill a drawer, the path the drawer slides along
must stay clear too (the world lets an opening drawer pass through objects). Where no direction does, the
stack stays in place and ``PerturbedInit.unmoved`` marks the initial state (logged). That is rare (at most 2%
of a bank's initial states) except for the cabinets of drawer tasks at ``major``: the goal and long_v1 scenes
leave no room to move a cabinet 6 cm with its drawer's path clear, so it stays in goal_2 (object_major), long_v1's
long_0 and long_6 (goal_major) and long_9 (object_major); the tasks' other stacks still move.

``combined_<level>`` applies the draws of ``goal_<level>``, ``object_<level>`` and ``robot_<level>`` in that
order (the larger receptacles first, as the fixed initial states place fixed objects first): its goal and
robot parts equal those conditions', its object part equals ``object_<level>``'s unless that direction runs
into the moved receptacle.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args

import numpy as np
import torch

from reinforge.envs.tabletop.catalog import DRAWER_MAX_OPEN, category
from reinforge.envs.tabletop.tasks import (
    _GAP,
    INIT_BANKS,
    REGIONS,
    InitBank,
    Split,
    TaskSpec,
    get_suite,
)

log = logging.getLogger(__name__)

Perturbation = Literal["", "object_minor", "object_major", "goal_minor", "goal_major", "robot_minor",
                       "robot_major", "combined_minor", "combined_major"]
PERTURBATIONS: tuple[str, ...] = get_args(Perturbation)[1:]  # "" (the default) means none
SHIFT = {"minor": 0.03, "major": 0.06}  # metres: planar object/goal shift and end-effector offset
YAW = {"minor": 0.25, "major": 0.5}  # radians: initial gripper yaw offset
MAX_TRIES = 64  # drawn directions per planar shift
Group = Literal["object", "goal"]
RegionGoal = tuple[int, tuple[float, float, float, float]]  # (object slot, region box x0, x1, y0, y1)


@dataclass(frozen=True)
class PerturbedInit:
    """One bank's initial states under a perturbation, laid out like the suite's tables."""

    pos: torch.Tensor  # float32 (T, I, N, 3) object positions
    gripper: torch.Tensor  # float32 (T, I, 3) end-effector start
    yaw: torch.Tensor  # float32 (T, I) gripper yaw at the start
    unmoved: torch.Tensor  # bool (T, I): a stack that should have moved stayed (no clear direction)


def _root(task: TaskSpec, key: str) -> str:
    """The object at the bottom of ``key``'s stack (a drawer's cabinet), from the layout."""
    spec = task.layout[key]
    while isinstance(spec, str) and spec.startswith(("on:", "in:")):
        key = spec[3:]
        spec = task.layout[key]
    return key


def moved_keys(task: TaskSpec, group: Group) -> tuple[str, ...]:
    """Keys of the objects that a ``group`` perturbation moves in ``task`` (see the module docstring)."""
    goal_roots = {_root(task, b) for pred, _, b in task.goals if pred in ("on", "in")}
    roots = goal_roots if group == "goal" else {_root(task, a) for _, a, _ in task.goals} - goal_roots
    return tuple(k for k in task.objects if _root(task, k) in roots)


def _parts(perturb: str) -> tuple[tuple[str, ...], str]:
    what, level = perturb.rsplit("_", 1)
    return (("goal", "object", "robot") if what == "combined" else (what,)), level


def _on_table_and_clear(p: np.ndarray, half: np.ndarray, others: np.ndarray,
                        others_half: np.ndarray) -> np.ndarray:
    """(D,) whether candidate footprints ``p`` (D, M, 2) lie on the table (the rule of ``tasks._sample_init``)
    and keep ``_GAP`` from every other footprint ``others`` (O, 2)."""
    on_table = ((np.abs(p[..., 0]) + half[:, 0] <= 0.3) & (p[..., 1] - half[:, 1] >= -0.24)
                & (p[..., 1] + half[:, 1] <= 0.26)).all(1)
    near = np.abs(p[:, :, None] - others[None, None]) < half[:, None] + others_half[None] + _GAP  # (D, M, O, 2)
    return on_table & ~near.all(-1).any((1, 2))


def _shift_stack(pos: np.ndarray, members: np.ndarray, footprints: tuple[np.ndarray, np.ndarray, np.ndarray],
                 regions: list[RegionGoal], shift: float, rng: np.random.Generator) -> bool:
    """In place: move the stack ``members`` (N,) of one scene ``pos`` (N, 3) by ``shift`` in the first drawn
    direction that keeps its ``footprints`` (see ``_task_tables``) on the table and clear of the others', with
    no push-region goal (slot, box) reached. Returns False (nothing moved) if none does."""
    offset, half, solid = footprints
    angle = rng.uniform(0.0, 2 * math.pi, MAX_TRIES)
    d = shift * np.stack([np.cos(angle), np.sin(angle)], -1)  # (D, 2)
    centre = pos[:, :2] + offset
    mine, others = members & solid, ~members & solid
    ok = _on_table_and_clear(centre[mine][None] + d[:, None], half[mine], centre[others], half[others])
    for slot, (x0, x1, y0, y1) in regions:
        if members[slot]:
            x, y = pos[slot, 0] + d[:, 0], pos[slot, 1] + d[:, 1]
            ok &= ~((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
    if not ok.any():
        return False
    pos[members, :2] += d[int(ok.argmax())].astype(pos.dtype)
    return True


def _robot_offset(rng: np.random.Generator, level: str) -> tuple[np.ndarray, float]:
    """An end-effector offset of length ``SHIFT[level]`` with its z part within half of it (the gripper stays
    well above the objects), and a yaw offset of ``YAW[level]`` with a random sign."""
    size = SHIFT[level]
    z = rng.uniform(-0.5, 0.5) * size
    phi = rng.uniform(0.0, 2 * math.pi)
    r = math.sqrt(size * size - z * z)
    return np.array([r * math.cos(phi), r * math.sin(phi), z], np.float32), float(rng.choice((-1.0, 1.0)) * YAW[level])


def _task_tables(task: TaskSpec, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[RegionGoal],
                                                  dict[str, list[np.ndarray]]]:
    """Per slot of ``task``'s scene (``n`` padded slots): the footprint that must stay on the table and clear of
    others, as an offset of its centre from the object's position (n, 2) and half extents (n, 2), and whether
    the slot has one (n,); the push-region goals as (slot, box); per group the stacks it moves, (n,) masks.

    A drawer's footprint is the path it slides along, from closed to fully open, in tasks whose goals name it
    (they open it or fill it): an open drawer passes through whatever stands in its way. Elsewhere it has none
    of its own: it sits inside its cabinet."""
    keys = list(task.objects)
    cats = [category(task.objects[key].category) for key in keys]
    named = {key for term in task.goals for key in term[1:]}
    offset, half = np.zeros((n, 2), np.float32), np.zeros((n, 2), np.float32)
    half[:len(keys)] = [c.half for c in cats]
    solid = np.zeros(n, bool)
    solid[:len(keys)] = [not c.drawer or key in named for key, c in zip(keys, cats)]
    for i, c in enumerate(cats):
        if c.drawer:
            offset[i, 1] = task.drawer_open - 0.5 * DRAWER_MAX_OPEN
            half[i, 1] += 0.5 * DRAWER_MAX_OPEN
    regions = [(keys.index(a), REGIONS[b]) for pred, a, b in task.goals if pred == "region"]
    roots = np.array([_root(task, key) for key in keys] + [""] * (n - len(keys)))
    stacks = {g: [roots == r for r in dict.fromkeys(_root(task, key) for key in moved_keys(task, g))]
              for g in ("object", "goal")}
    return offset, half, solid, regions, stacks


@cache
def perturbed_init(suite: str, split: Split, bank: InitBank, perturb: Perturbation) -> PerturbedInit:
    """The initial states of ``bank`` of ``suite``/``split`` under ``perturb`` (one of ``PERTURBATIONS``), computed
    once per process; resets then only index these tables."""
    if perturb not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturb!r}; use one of {list(PERTURBATIONS)}")
    s = get_suite(suite, split)
    k = INIT_BANKS.index(bank)
    pos = s.init_pos[k].numpy().copy()
    gripper = s.init_gripper[k].numpy().copy()
    yaw = np.zeros(gripper.shape[:2], np.float32)
    unmoved = np.zeros(yaw.shape, bool)
    parts, level = _parts(perturb)
    for t, task in enumerate(s.tasks):
        offset, half, solid, regions, stacks = _task_tables(task, pos.shape[2])
        for i in range(pos.shape[1]):
            for part in parts:
                rng = np.random.default_rng(
                    [zlib.crc32(f"{suite}/{split}/{bank}/{part}_{level}".encode()), t, i])
                if part == "robot":
                    eef, yaw[t, i] = _robot_offset(rng, level)
                    gripper[t, i] += eef
                    continue
                for stack in stacks[part]:
                    unmoved[t, i] |= not _shift_stack(pos[t, i], stack, (offset, half, solid), regions,
                                                      SHIFT[level], rng)
    if unmoved.any():
        log.info("perturbation %s of %s/%s (%s bank): %d of %d initial states keep a stack in place (no clear "
                 "direction)", perturb, suite, split, bank, int(unmoved.sum()), unmoved.size)
    return PerturbedInit(torch.from_numpy(pos), torch.from_numpy(gripper), torch.from_numpy(yaw),
                         torch.from_numpy(unmoved))
