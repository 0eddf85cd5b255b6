"""MetaWorld suites, their language instructions and the fixed initial-state banks.

A suite is ``"mt10"`` (the 10 MT10 tasks), ``"mt50"`` (all 50 v3 tasks), one task name (``"pick-place-v3"``,
an MT1 suite) or a comma-separated list of task names (``"reach-v3,push-v3"``).

Initial states: MetaWorld varies a task by a random vector (object and goal positions) fixed with
``env.set_task(task)``. MT1's sampler draws 50 such variations per task name from a seed; the bank ``"eval"``
is MT1's ``train_tasks`` drawn with seed 0, the bank ``"train"`` the same with seed 1 and the bank ``"val"``
with seed 2 (continuous draws, so the banks share no state). Banks are built on first use of a task (about
0.7 s each) and cached per process.
They are fixed by MetaWorld's sampler: another MetaWorld version may draw other states.
"""

from __future__ import annotations

import functools
from typing import Literal

import metaworld
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

InitBank = Literal["eval", "train", "val"]
INIT_BANKS: tuple[str, ...] = ("eval", "train", "val")
BANK_SEEDS = {"eval": 0, "train": 1, "val": 2}
NUM_INIT_STATES = 50  # MetaWorld's variations per task name

TASK_NAMES: tuple[str, ...] = tuple(ALL_V3_ENVIRONMENTS)
MT10_TASKS: tuple[str, ...] = tuple(MT10_V3)
SUITES = {"mt10": MT10_TASKS, "mt50": TASK_NAMES}

# hand-written for MT10; the other tasks get one made from their name (``instruction``)
INSTRUCTIONS = {
    "reach-v3": "move the gripper to the goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door of the safe",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}


def instruction(task: str) -> str:
    """The language instruction of a task: hand-written for MT10, else made from the name
    (``"coffee-button-v3"`` -> ``"coffee button"``)."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    return task.removesuffix("-v3").replace("-", " ")


def suite_tasks(suite: str) -> tuple[str, ...]:
    """The task names of a suite, in task-id order."""
    key = suite.strip().lower()
    if key in SUITES:
        return SUITES[key]
    names = tuple(n.strip() for n in key.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_V3_ENVIRONMENTS]
    if not names or unknown:
        raise ValueError(f"unknown MetaWorld suite {suite!r}" + (f" (unknown tasks {unknown})" if unknown else "")
                         + f": use {sorted(SUITES)}, a task name or a comma-separated list of task names; "
                         f"task names: {list(TASK_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"MetaWorld suite {suite!r} names a task twice")
    return names


@functools.cache
def init_states(task: str, bank: InitBank) -> tuple[metaworld.Task, ...]:
    """The ``NUM_INIT_STATES`` fixed variations of ``task`` in ``bank`` (MetaWorld ``Task`` objects for
    ``env.set_task``; they carry the goal, so the env's observation includes it)."""
    if bank not in BANK_SEEDS:
        raise ValueError(f"unknown init_bank {bank!r}; use one of {list(INIT_BANKS)}")
    states = tuple(metaworld.MT1(task, seed=BANK_SEEDS[bank]).train_tasks)
    assert len(states) == NUM_INIT_STATES, (task, len(states))
    return states
