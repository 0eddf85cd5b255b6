"""Task suites of the tabletop world, modelled on LIBERO (spatial, object, goal, long).

A task is a scene (named objects of catalogue categories and colours), a layout (nominal positions with
jitter, or random placement), a language instruction and a conjunction of goal predicates. Every task has
``NUM_INIT_STATES`` fixed initial states generated from a seed derived from the suite and task name, so the
same ``(task, init_id)`` always gives the same scene on every machine.

Held-out splits test generalisation and are never used for training: unseen layouts (``spatial``),
unseen object/colour combinations (``object``) and unseen goal combinations (``goal``).

Suites are versioned: when a definition changes, the old one stays buildable under ``<name>_v<k>`` so
that published results can be reproduced (``LEGACY_SUITES``; they keep the seeds of their old name and
rebuild bit for bit). ``object_v1`` placed every object at random per initial state and ``long_v1`` shared
one 9-object scene between all tasks; one demonstration per task taught a policy almost nothing on either
(~0% success), so ``object`` and ``long`` now follow LIBERO more closely (see their builders).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import numpy as np
import torch

from reinforge.envs.tabletop.catalog import CATEGORY_INDEX, category, color

NUM_INIT_STATES = 50
# three disjoint banks of fixed initial states per task: ``eval`` for the numbers a run reports, ``train`` for
# demonstrations and RL rollouts, ``val`` for everything that steers a run (periodic evaluations, early stopping,
# preset and calibration choices). Each bank is drawn from its own name, so adding one left the others unchanged.
INIT_BANKS = ("eval", "train", "val")
InitBank = Literal["eval", "train", "val"]
SUITE_NAMES = ("spatial", "object", "goal", "long")  # the current suites (what `--suite all` runs)
LEGACY_SUITES = ("object_v1", "long_v1")  # earlier definitions, buildable by name to reproduce old results
SPLITS = ("train", "heldout")
Split = Literal["train", "heldout"]

# goal predicates: (pred, a, b); b is an object for on/in and a region index for "region"
PRED_ON, PRED_IN, PRED_OPEN, PRED_CLOSED, PRED_REGION = 0, 1, 2, 3, 4
PRED_CODES = {"on": PRED_ON, "in": PRED_IN, "open": PRED_OPEN, "closed": PRED_CLOSED, "region": PRED_REGION}
REGIONS: dict[str, tuple[float, float, float, float]] = {  # object centre (x0, x1, y0, y1)
    "front": (-0.3, 0.3, -0.3, -0.02),
    "left": (-0.3, -0.08, -0.3, 0.3),
    "right": (0.15, 0.3, -0.3, 0.3),
    "front_edge": (-0.3, 0.3, -0.3, -0.15),
}
GRIPPER_HOME = (0.0, -0.17, 0.2)

Pos = tuple[float, float]


@dataclass(frozen=True)
class ObjectSpec:
    category: str
    color: str
    label: str = ""  # how the instruction names it; defaults to "<color> <category>"

    @property
    def text(self) -> str:
        return self.label or f"{self.color} {self.category}"


@dataclass(frozen=True)
class TaskSpec:
    """One task: objects by key, their layout, the instruction and the goal predicates."""

    name: str
    instruction: str
    objects: dict[str, ObjectSpec]
    layout: dict[str, Pos | str]  # key -> nominal (x, y), or "on:<key>" to stack, or "random"
    goals: tuple[tuple[str, str, str], ...]  # (pred, a, b) with b "" for open/closed
    jitter: float = 0.012
    drawer_open: float = 0.0
    cabinet_of_drawer: str = "cabinet"


@dataclass
class Suite:
    """A suite's tasks with their static scene tables and fixed initial states as tensors."""

    name: str
    split: str
    tasks: list[TaskSpec]
    max_episode_steps: int
    num_objects: int  # padded object slots per scene
    # (T, N) int64 category / (T, N, 3) uint8 rgb / (T, N) bool active
    category: torch.Tensor = field(repr=False, default=None)
    rgb: torch.Tensor = field(repr=False, default=None)
    active: torch.Tensor = field(repr=False, default=None)
    # per init bank (see INIT_BANKS), (K, T, I, N, 3) object positions (x, y, z_bottom), (K, T, I, N)
    # support index, (K, T, I, N) inside flag, (K, T, I, 3) gripper start
    init_pos: torch.Tensor = field(repr=False, default=None)
    init_support: torch.Tensor = field(repr=False, default=None)
    init_inside: torch.Tensor = field(repr=False, default=None)
    init_gripper: torch.Tensor = field(repr=False, default=None)
    # (T, G, 3) int64 goal terms (pred, a, b) with (T, G) bool mask; (T, G, 4) region boxes
    goal_terms: torch.Tensor = field(repr=False, default=None)
    goal_mask: torch.Tensor = field(repr=False, default=None)
    goal_regions: torch.Tensor = field(repr=False, default=None)
    object_keys: list[list[str]] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def instructions(self) -> list[str]:
        return [t.instruction for t in self.tasks]

    def fingerprint(self) -> str:
        """16 hex digits of a SHA-256 over the scene tables, initial states, goals and instructions: the same on
        every machine for the same definition (tests pin it, so a changed suite must get a new version name).
        It covers the ``eval`` and ``train`` banks (the ``val`` bank came later: ``bank_fingerprint("val")``)."""
        h = hashlib.sha256()
        banks = slice(0, 2)  # eval, train
        for key in ("category", "rgb", "active", "init_pos", "init_support", "init_inside", "init_gripper",
                    "goal_terms", "goal_mask", "goal_regions"):
            t = getattr(self, key)
            h.update((t[banks] if key.startswith("init_") else t).contiguous().numpy().tobytes())
        h.update("\n".join(self.instructions).encode())
        return h.hexdigest()[:16]

    def bank_fingerprint(self, bank: InitBank) -> str:
        """16 hex digits of a SHA-256 over one bank's initial states (pinned by the tests like ``fingerprint``)."""
        k = INIT_BANKS.index(bank)
        h = hashlib.sha256()
        for key in ("init_pos", "init_support", "init_inside", "init_gripper"):
            h.update(getattr(self, key)[k].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def task_index(self, name_or_id: str | int) -> int:
        if isinstance(name_or_id, int):
            if not 0 <= name_or_id < self.num_tasks:
                raise ValueError(f"task id {name_or_id} out of range for suite {self.name!r} "
                                 f"({self.num_tasks} tasks: 0..{self.num_tasks - 1})")
            return name_or_id
        names = [t.name for t in self.tasks]
        if name_or_id not in names:
            raise ValueError(f"unknown task {name_or_id!r} in suite {self.name!r}; known: {names}")
        return names.index(name_or_id)


# ---------------------------------------------------------------- suite definitions

def _spatial_objects() -> dict[str, ObjectSpec]:
    return {
        "target": ObjectSpec("bowl", "black", "black bowl"),
        "other_bowl": ObjectSpec("bowl", "black", "black bowl"),
        "plate": ObjectSpec("plate", "white", "plate"),
        "mug": ObjectSpec("mug", "red", "red mug"),
        "cheese": ObjectSpec("cheese box", "yellow", "cheese box"),
        "cookies": ObjectSpec("cookie box", "brown", "cookie box"),
    }


# relation phrase -> layout (target, other_bowl, plate, mug, cheese, cookies)
_SPATIAL_LAYOUTS: list[tuple[str, dict[str, Pos | str]]] = [
    ("between the plate and the red mug", dict(target=(0.0, 0.05), plate=(-0.16, 0.05), mug=(0.14, 0.05),
                                               other_bowl=(0.13, -0.11), cheese=(-0.15, -0.11),
                                               cookies=(0.0, 0.19))),
    ("next to the red mug", dict(target=(0.06, 0.12), mug=(0.16, 0.12), other_bowl=(-0.14, 0.12),
                                 plate=(-0.05, -0.08), cheese=(0.15, -0.08), cookies=(-0.21, -0.1))),
    ("at the center of the table", dict(target=(0.0, 0.0), other_bowl=(-0.18, 0.14), plate=(0.16, 0.12),
                                        mug=(-0.17, -0.06), cheese=(0.15, -0.1), cookies=(0.0, 0.19))),
    ("on the cheese box", dict(cheese=(-0.12, 0.1), target="on:cheese", other_bowl=(0.14, -0.08),
                               plate=(0.12, 0.1), mug=(-0.14, -0.1), cookies=(0.0, -0.13))),
    ("on the cookie box", dict(cookies=(0.1, 0.12), target="on:cookies", other_bowl=(-0.14, 0.0),
                               plate=(-0.08, 0.16), cheese=(0.14, -0.1), mug=(-0.02, -0.1))),
    ("next to the cheese box", dict(cheese=(0.18, 0.02), target=(0.08, 0.02), other_bowl=(-0.16, 0.14),
                                    plate=(-0.12, -0.06), mug=(0.0, 0.17), cookies=(0.1, -0.14))),
    ("in front of the plate", dict(plate=(0.0, 0.13), target=(0.0, 0.0), other_bowl=(-0.18, 0.0),
                                   mug=(0.17, -0.08), cheese=(-0.16, -0.13), cookies=(0.17, 0.15))),
    ("behind the red mug", dict(mug=(-0.1, -0.06), target=(-0.1, 0.06), other_bowl=(0.14, -0.08),
                                plate=(0.14, 0.12), cheese=(0.0, 0.17), cookies=(-0.22, 0.17))),
    ("on the left side of the table", dict(target=(-0.2, 0.02), other_bowl=(0.2, 0.02), plate=(0.0, 0.12),
                                           mug=(0.0, -0.1), cheese=(-0.12, -0.14), cookies=(0.14, -0.14))),
    ("next to the plate", dict(plate=(0.1, 0.05), target=(-0.04, 0.05), other_bowl=(-0.16, -0.1),
                               mug=(0.17, -0.1), cheese=(-0.16, 0.15), cookies=(0.06, -0.14))),
]


def _mirror(layout: dict[str, Pos | str]) -> dict[str, Pos | str]:
    return {k: v if isinstance(v, str) else (-v[0], v[1]) for k, v in layout.items()}


def _spatial_tasks(split: Split) -> list[TaskSpec]:
    tasks = []
    for i, (relation, layout) in enumerate(_SPATIAL_LAYOUTS):
        if split == "heldout":  # unseen layouts: the mirror image; "left" must stay left, so swap bowls
            layout = _mirror(layout)
            if "left side" in relation:
                layout["target"], layout["other_bowl"] = layout["other_bowl"], layout["target"]
        tasks.append(TaskSpec(
            name=f"spatial_{i}",
            instruction=f"pick up the black bowl {relation} and place it on the plate",
            objects=_spatial_objects(), layout=layout, goals=(("on", "target", "plate"),)))
    return tasks


_OBJECT_TRAIN = [("cube", "red"), ("mug", "blue"), ("bottle", "green"), ("can", "yellow"), ("bowl", "white"),
                 ("cheese box", "orange"), ("cube", "purple"), ("bottle", "brown"), ("mug", "pink"),
                 ("can", "cyan")]
_OBJECT_HELDOUT = [("cube", "blue"), ("mug", "red"), ("bottle", "yellow"), ("can", "green"), ("bowl", "orange"),
                   ("cheese box", "purple"), ("cube", "pink"), ("bottle", "cyan"), ("mug", "brown"),
                   ("can", "red")]


def _object_scene(split: Split, i: int, target: tuple[str, str]) -> dict[str, ObjectSpec]:
    """Task ``i``'s objects: the target, the basket and four training objects other than the target as
    distractors, fixed per task (the same draw in ``object_v1`` and ``object``)."""
    pool = [o for o in _OBJECT_TRAIN if o != target]
    rng = np.random.default_rng(zlib.crc32(f"object/{split}/{i}".encode()))
    objects = {"target": ObjectSpec(*target), "basket": ObjectSpec("basket", "wicker", "basket")}
    for j in rng.choice(len(pool), size=4, replace=False):
        objects[f"distractor_{len(objects) - 2}"] = ObjectSpec(*pool[j])
    return objects


def _object_v1_tasks(split: Split) -> list[TaskSpec]:
    """``object_v1``: the target and the distractors anywhere on the table, drawn anew per initial state."""
    targets = _OBJECT_TRAIN if split == "train" else _OBJECT_HELDOUT
    tasks = []
    for i, target in enumerate(targets):
        objects = _object_scene(split, i, target)
        layout: dict[str, Pos | str] = {k: "random" for k in objects}
        layout["basket"] = (0.15, 0.11)
        tasks.append(TaskSpec(
            name=f"object_{i}", instruction=f"pick up the {objects['target'].text} and place it in the basket",
            objects=objects, layout=layout, goals=(("in", "target", "basket"),)))
    return tasks


# object templates: the basket at the back right and five object slots around it; odd tasks use the mirror image
_OBJECT_BASKET: Pos = (0.15, 0.11)
_OBJECT_SLOTS: tuple[Pos, ...] = ((-0.18, 0.12), (-0.04, 0.14), (-0.17, -0.06), (-0.02, -0.03), (0.14, -0.09))


def _object_tasks(split: Split) -> list[TaskSpec]:
    """``object``, as LIBERO-Object: every task has its own fixed scene (its five objects in the slots of a
    template, a per-task assignment, with the usual jitter) and names the target. The held-out tasks use the
    same templates with targets of unseen category/colour combinations, in slots of their own."""
    targets = _OBJECT_TRAIN if split == "train" else _OBJECT_HELDOUT
    tasks = []
    for i, target in enumerate(targets):
        objects = _object_scene(split, i, target)
        movable = [k for k in objects if k != "basket"]
        slots = np.random.default_rng(zlib.crc32(f"object/{split}/{i}/slots".encode())).permutation(len(movable))
        layout: dict[str, Pos | str] = {"basket": _OBJECT_BASKET}
        layout.update({k: _OBJECT_SLOTS[j] for k, j in zip(movable, slots)})
        if i % 2:
            layout = _mirror(layout)
        tasks.append(TaskSpec(
            name=f"object_{i}", instruction=f"pick up the {objects['target'].text} and place it in the basket",
            objects=objects, layout=layout, goals=(("in", "target", "basket"),)))
    return tasks


def _goal_scene() -> tuple[dict[str, ObjectSpec], dict[str, Pos | str]]:
    objects = {
        "bowl": ObjectSpec("bowl", "black", "black bowl"),
        "plate": ObjectSpec("plate", "white", "plate"),
        "mug": ObjectSpec("mug", "red", "red mug"),
        "cheese": ObjectSpec("cheese box", "yellow", "cheese box"),
        "bottle": ObjectSpec("bottle", "green", "green bottle"),
        "cabinet": ObjectSpec("cabinet", "wood", "cabinet"),
        "drawer": ObjectSpec("drawer", "wood", "drawer"),
    }
    layout: dict[str, Pos | str] = dict(bowl=(0.0, 0.0), plate=(0.16, 0.1), mug=(0.05, -0.14),
                                        cheese=(-0.12, -0.1), bottle=(0.02, 0.16), cabinet=(-0.16, 0.15),
                                        drawer="in:cabinet")
    return objects, layout


_GOAL_TRAIN = [
    ("put the black bowl on the plate", (("on", "bowl", "plate"),)),
    ("put the black bowl on top of the cabinet", (("on", "bowl", "cabinet"),)),
    ("open the drawer of the cabinet", (("open", "drawer", ""),)),
    ("put the red mug on the plate", (("on", "mug", "plate"),)),
    ("put the green bottle on top of the cabinet", (("on", "bottle", "cabinet"),)),
    ("push the plate to the front of the table", (("region", "plate", "front"),)),
    ("put the red mug in the black bowl", (("in", "mug", "bowl"),)),
    ("put the cheese box on top of the cabinet", (("on", "cheese", "cabinet"),)),
    ("stack the black bowl on the cheese box", (("on", "bowl", "cheese"),)),
    ("put the cheese box on the plate", (("on", "cheese", "plate"),)),
]
_GOAL_HELDOUT = [
    ("put the red mug on top of the cabinet", (("on", "mug", "cabinet"),)),
    ("put the green bottle on the plate", (("on", "bottle", "plate"),)),
    ("put the green bottle in the black bowl", (("in", "bottle", "bowl"),)),
    ("stack the red mug on the cheese box", (("on", "mug", "cheese"),)),
    ("push the black bowl to the left of the table", (("region", "bowl", "left"),)),
    ("put the green bottle on the cheese box", (("on", "bottle", "cheese"),)),
    ("push the red mug to the right of the table", (("region", "mug", "right"),)),
    ("put the plate on top of the cabinet", (("on", "plate", "cabinet"),)),
    ("push the cheese box to the front edge of the table", (("region", "cheese", "front_edge"),)),
    ("put the cheese box on the black bowl", (("on", "cheese", "bowl"),)),
]


def _goal_tasks(split: Split) -> list[TaskSpec]:
    objects, layout = _goal_scene()
    goals = _GOAL_TRAIN if split == "train" else _GOAL_HELDOUT
    return [TaskSpec(name=f"goal_{i}", instruction=text, objects=objects, layout=layout, goals=terms)
            for i, (text, terms) in enumerate(goals)]


def _long_v1_scene() -> tuple[dict[str, ObjectSpec], dict[str, Pos | str]]:
    objects = {
        "cabinet": ObjectSpec("cabinet", "wood", "cabinet"),
        "drawer": ObjectSpec("drawer", "wood", "drawer"),
        "basket": ObjectSpec("basket", "wicker", "basket"),
        "plate": ObjectSpec("plate", "white", "plate"),
        "bowl": ObjectSpec("bowl", "black", "black bowl"),
        "cube": ObjectSpec("cube", "red", "red cube"),
        "can": ObjectSpec("can", "yellow", "yellow can"),
        "mug": ObjectSpec("mug", "blue", "blue mug"),
        "bottle": ObjectSpec("bottle", "green", "green bottle"),
    }
    layout: dict[str, Pos | str] = dict(cabinet=(-0.185, 0.15), drawer="in:cabinet", basket=(0.19, 0.13),
                                        plate=(0.01, 0.14), bowl=(-0.2, -0.12), cube=(0.04, -0.04),
                                        can=(0.16, -0.04), mug=(-0.05, -0.15), bottle=(0.2, -0.16))
    return objects, layout


_LONG_V1_TASKS = [
    ("open the drawer and put the black bowl in it", (("open", "drawer", ""), ("in", "bowl", "drawer"))),
    ("put the red cube and the yellow can in the basket", (("in", "cube", "basket"), ("in", "can", "basket"))),
    ("put the black bowl on the plate and the blue mug in the basket",
     (("on", "bowl", "plate"), ("in", "mug", "basket"))),
    ("put the red cube on the plate and the green bottle in the basket",
     (("on", "cube", "plate"), ("in", "bottle", "basket"))),
    ("put the yellow can on top of the cabinet and the red cube in the basket",
     (("on", "can", "cabinet"), ("in", "cube", "basket"))),
    ("put the blue mug in the black bowl and the red cube on the plate",
     (("in", "mug", "bowl"), ("on", "cube", "plate"))),
    ("open the drawer and put the red cube in it", (("open", "drawer", ""), ("in", "cube", "drawer"))),
    ("put the black bowl in the basket and the green bottle on the plate",
     (("in", "bowl", "basket"), ("on", "bottle", "plate"))),
    ("put the blue mug on top of the cabinet and the yellow can on the plate",
     (("on", "mug", "cabinet"), ("on", "can", "plate"))),
    ("put the green bottle in the basket and open the drawer", (("in", "bottle", "basket"), ("open", "drawer", ""))),
]


def _long_v1_tasks(split: Split) -> list[TaskSpec]:
    """``long_v1``: every task in the same 9-object scene."""
    objects, layout = _long_v1_scene()
    return [TaskSpec(name=f"long_{i}", instruction=text, objects=objects, layout=layout, goals=terms)
            for i, (text, terms) in enumerate(_LONG_V1_TASKS)]


_LONG_OBJECTS = {
    "cabinet": ObjectSpec("cabinet", "wood", "cabinet"),
    "drawer": ObjectSpec("drawer", "wood", "drawer"),
    "basket": ObjectSpec("basket", "wicker", "basket"),
    "plate": ObjectSpec("plate", "white", "plate"),
    "left_plate": ObjectSpec("plate", "white", "left plate"),
    "right_plate": ObjectSpec("plate", "white", "right plate"),
    "bowl": ObjectSpec("bowl", "black", "black bowl"),
    "cube": ObjectSpec("cube", "red", "red cube"),
    "can": ObjectSpec("can", "yellow", "yellow can"),
    "mug": ObjectSpec("mug", "blue", "blue mug"),
    "red_mug": ObjectSpec("mug", "red", "red mug"),
    "bottle": ObjectSpec("bottle", "green", "green bottle"),
    "cheese": ObjectSpec("cheese box", "yellow", "cheese box"),
}
# (instruction, goals, layout, drawer opening at the start); the scene is the layout's objects
_LONG_TASKS: list[tuple[str, tuple[tuple[str, str, str], ...], dict[str, Pos | str], float]] = [
    ("put both the red cube and the yellow can in the basket", (("in", "cube", "basket"), ("in", "can", "basket")),
     dict(basket=(0.12, 0.1), cube=(-0.04, 0.06), can=(-0.02, -0.08), mug=(-0.18, 0.02)), 0.0),
    ("open the drawer and put the black bowl in it", (("open", "drawer", ""), ("in", "bowl", "drawer")),
     dict(cabinet=(-0.12, 0.15), drawer="in:cabinet", bowl=(0.1, -0.04), plate=(0.14, 0.14)), 0.0),
    ("put the black bowl in the drawer and close it", (("in", "bowl", "drawer"), ("closed", "drawer", "")),
     dict(cabinet=(-0.12, 0.15), drawer="in:cabinet", bowl=(0.1, -0.04), cube=(0.14, 0.14)), 0.1),
    ("put the blue mug on the left plate and the red mug on the right plate",
     (("on", "mug", "left_plate"), ("on", "red_mug", "right_plate")),
     dict(left_plate=(-0.14, 0.12), right_plate=(0.14, 0.12), mug=(-0.06, -0.08), red_mug=(0.08, -0.08)), 0.0),
    ("put the red cube on the plate and the green bottle in the basket",
     (("on", "cube", "plate"), ("in", "bottle", "basket")),
     dict(plate=(-0.13, 0.1), basket=(0.13, 0.1), cube=(-0.1, -0.08), bottle=(0.06, -0.06), can=(0.2, -0.12)), 0.0),
    ("put the blue mug on the plate and push the cheese box to the right of the table",
     (("on", "mug", "plate"), ("region", "cheese", "right")),
     dict(plate=(-0.08, 0.1), mug=(-0.17, -0.06), cheese=(0.04, -0.06), bottle=(0.14, 0.14)), 0.0),
    ("open the drawer and put the red cube in it", (("open", "drawer", ""), ("in", "cube", "drawer")),
     dict(cabinet=(0.12, 0.15), drawer="in:cabinet", cube=(-0.1, -0.02), bowl=(-0.14, 0.14)), 0.0),
    ("put the black bowl in the basket and the green bottle on the plate",
     (("in", "bowl", "basket"), ("on", "bottle", "plate")),
     dict(basket=(-0.13, 0.1), plate=(0.13, 0.1), bowl=(-0.06, -0.06), bottle=(0.14, -0.1), cube=(0.02, 0.14)),
     0.0),
    ("put the blue mug in the black bowl and the red cube on the plate",
     (("in", "mug", "bowl"), ("on", "cube", "plate")),
     dict(bowl=(-0.12, 0.08), plate=(0.12, 0.1), mug=(-0.06, -0.09), cube=(0.06, -0.06)), 0.0),
    ("close the drawer and put the yellow can in the basket", (("closed", "drawer", ""), ("in", "can", "basket")),
     dict(cabinet=(-0.12, 0.15), drawer="in:cabinet", basket=(0.14, 0.1), can=(0.06, -0.1)), 0.1),
]


def _long_tasks(split: Split) -> list[TaskSpec]:
    """``long``, as LIBERO-10: two sub-goals per task, each task in a small fixed scene of its own (4-5 objects
    with the usual jitter, short distances), so one demonstration shows a task's whole scene."""
    return [TaskSpec(name=f"long_{i}", instruction=text, objects={k: _LONG_OBJECTS[k] for k in layout},
                     layout=layout, goals=goals, drawer_open=drawer_open)
            for i, (text, goals, layout, drawer_open) in enumerate(_LONG_TASKS)]


_BUILDERS = {"spatial": _spatial_tasks, "object": _object_tasks, "goal": _goal_tasks, "long": _long_tasks,
             "object_v1": _object_v1_tasks, "long_v1": _long_v1_tasks}
MAX_EPISODE_STEPS = {"spatial": 160, "object": 160, "goal": 160, "long": 320, "object_v1": 160, "long_v1": 320}
HELDOUT_SUITES = ("spatial", "object", "goal", "object_v1")
_SEED_NAMES = {"object_v1": "object", "long_v1": "long"}  # the name a suite's initial states are seeded by


# ---------------------------------------------------------------- initial states

_TABLE_X, _TABLE_Y = (-0.27, 0.27), (-0.2, 0.22)
_GAP = 0.006


def _overlaps(p: Pos, half: tuple[float, float], placed: list[tuple[Pos, tuple[float, float]]]) -> bool:
    return any(abs(p[0] - q[0]) < half[0] + h[0] + _GAP and abs(p[1] - q[1]) < half[1] + h[1] + _GAP
               for q, h in placed)


def _sample_init(task: TaskSpec, rng: np.random.Generator, n_slots: int):
    """One initial state: positions (N, 3), support (N,), inside (N,), gripper (3,)."""
    keys = list(task.objects)
    pos = np.zeros((n_slots, 3), np.float32)
    support = np.full(n_slots, -1, np.int64)
    inside = np.zeros(n_slots, bool)
    placed: list[tuple[Pos, tuple[float, float]]] = []
    order = sorted(range(len(keys)), key=lambda i: isinstance(task.layout[keys[i]], str))
    for i in order:  # fixed positions first, then stacked / random ones
        key, spec = keys[i], task.layout[keys[i]]
        cat = category(task.objects[key].category)
        if isinstance(spec, str) and spec.startswith(("on:", "in:")):
            j = keys.index(spec[3:])
            base = category(task.objects[keys[j]].category)
            if cat.drawer:  # drawer slides in its cabinet: flush with the cabinet front, low
                pos[i] = (pos[j, 0], pos[j, 1] - base.half[1] + cat.half[1] - task.drawer_open, 0.015)
                continue
            d = rng.uniform(-0.004, 0.004, size=2)
            pos[i] = (pos[j, 0] + d[0], pos[j, 1] + d[1], pos[j, 2] + base.height)
            support[i] = j
            continue
        for _ in range(500):
            if spec == "random":
                p = (rng.uniform(*_TABLE_X) , rng.uniform(_TABLE_Y[0], 0.2))
            else:
                d = rng.uniform(-task.jitter, task.jitter, size=2)
                p = (spec[0] + d[0], spec[1] + d[1])
            on_table = abs(p[0]) + cat.half[0] <= 0.3 and p[1] - cat.half[1] >= -0.24 and p[1] + cat.half[1] <= 0.26
            if on_table and not _overlaps(p, cat.half, placed):
                break
        else:
            raise ValueError(f"task {task.name!r}: could not place {key!r} without overlap; fix its layout")
        placed.append((p, cat.half))
        pos[i] = (p[0], p[1], 0.0)
    g = rng.uniform(-1.0, 1.0, size=3) * (0.02, 0.02, 0.01)
    gripper = np.asarray(GRIPPER_HOME, np.float32) + g.astype(np.float32)
    return pos, support, inside, gripper


def _goal_tensor(task: TaskSpec, keys: list[str], max_terms: int):
    terms = np.zeros((max_terms, 3), np.int64)
    regions = np.zeros((max_terms, 4), np.float32)
    mask = np.zeros(max_terms, bool)
    for g, (pred, a, b) in enumerate(task.goals):
        if pred not in PRED_CODES:
            raise ValueError(f"task {task.name!r}: unknown predicate {pred!r}; known: {sorted(PRED_CODES)}")
        terms[g, 0], terms[g, 1] = PRED_CODES[pred], keys.index(a)
        if pred in ("on", "in"):
            terms[g, 2] = keys.index(b)
        if pred == "region":
            regions[g] = REGIONS[b]
        mask[g] = True
    return terms, mask, regions


@cache
def get_suite(name: str, split: Split = "train") -> Suite:
    """Build (once) the suite ``name`` (one of ``SUITE_NAMES`` or ``LEGACY_SUITES``) for ``split`` (train |
    heldout)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown suite {name!r}; known suites: {list(SUITE_NAMES)} (earlier versions: "
                         f"{list(LEGACY_SUITES)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    if split == "heldout" and name not in HELDOUT_SUITES:
        raise ValueError(f"suite {name!r} has no held-out split; held-out splits exist for {list(HELDOUT_SUITES)}")
    tasks = _BUILDERS[name](split)
    seed_name = _SEED_NAMES.get(name, name)
    n_slots = max(len(t.objects) for t in tasks)
    max_terms = max(len(t.goals) for t in tasks)
    T, I = len(tasks), NUM_INIT_STATES
    cat = np.zeros((T, n_slots), np.int64)
    rgb = np.zeros((T, n_slots, 3), np.uint8)
    active = np.zeros((T, n_slots), bool)
    K = len(INIT_BANKS)
    init_pos = np.zeros((K, T, I, n_slots, 3), np.float32)
    init_support = np.full((K, T, I, n_slots), -1, np.int64)
    init_inside = np.zeros((K, T, I, n_slots), bool)
    init_grip = np.zeros((K, T, I, 3), np.float32)
    goal_terms = np.zeros((T, max_terms, 3), np.int64)
    goal_mask = np.zeros((T, max_terms), bool)
    goal_regions = np.zeros((T, max_terms, 4), np.float32)
    object_keys = []
    for t, task in enumerate(tasks):
        keys = list(task.objects)
        object_keys.append(keys)
        for i, key in enumerate(keys):
            cat[t, i] = CATEGORY_INDEX[task.objects[key].category]
            rgb[t, i] = color(task.objects[key].color)
            active[t, i] = True
        for k, bank in enumerate(INIT_BANKS):
            for i in range(I):
                rng = np.random.default_rng([zlib.crc32(f"{seed_name}/{split}/{task.name}/{bank}".encode()), i])
                init_pos[k, t, i], init_support[k, t, i], init_inside[k, t, i], init_grip[k, t, i] = _sample_init(
                    task, rng, n_slots)
        goal_terms[t], goal_mask[t], goal_regions[t] = _goal_tensor(task, keys, max_terms)
    return Suite(
        name=name, split=split, tasks=tasks, max_episode_steps=MAX_EPISODE_STEPS[name], num_objects=n_slots,
        category=torch.from_numpy(cat), rgb=torch.from_numpy(rgb), active=torch.from_numpy(active),
        init_pos=torch.from_numpy(init_pos), init_support=torch.from_numpy(init_support),
        init_inside=torch.from_numpy(init_inside), init_gripper=torch.from_numpy(init_grip),
        goal_terms=torch.from_numpy(goal_terms), goal_mask=torch.from_numpy(goal_mask),
        goal_regions=torch.from_numpy(goal_regions), object_keys=object_keys)
