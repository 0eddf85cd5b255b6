"""Vectorised environments: the contract, the registry and the registered envs.

Only this package knows concrete simulators; everything else builds envs with ``make_env`` from an
``EnvConfig``. Real simulators are imported lazily, on first use.
"""

from __future__ import annotations

from reinforge.envs.base import (
    ChunkResult,
    EnvConfig,
    EnvSpec,
    PendingChunk,
    Task,
    VecEnv,
    known_suites,
    make_env,
    register_env,
    registered_envs,
)
from reinforge.envs.libero.options import LIBERO_SUITES, LiberoOptions, libero_layout, libero_task_ids
from reinforge.envs.metaworld.options import MetaWorldOptions
from reinforge.envs.tabletop.env import TabletopEnv
from reinforge.envs.tabletop.options import TabletopOptions
from reinforge.envs.tabletop.tasks import LEGACY_SUITES, SUITE_NAMES
from reinforge.worldmodel.options import WorldModelOptions

# the current suites (`--suite all`); earlier versions (LEGACY_SUITES: object_v1, long_v1) run by name
register_env("tabletop", TabletopEnv, options=TabletopOptions, suites=SUITE_NAMES, other_suites=tuple(LEGACY_SUITES))
register_env("libero", "reinforge.envs.libero.env:LiberoEnv", options=LiberoOptions, suites=LIBERO_SUITES,
             extra="libero")
register_env("worldmodel", "reinforge.worldmodel.env:WorldModelEnv", options=WorldModelOptions,
             suites=("<the suite its data was recorded in>",))
register_env("metaworld", "reinforge.envs.metaworld.env:MetaWorldEnv", options=MetaWorldOptions,
             suites=("mt10", "mt50", "<task>-v3"), extra="metaworld")

__all__ = ["LIBERO_SUITES", "ChunkResult", "EnvConfig", "EnvSpec", "PendingChunk", "Task", "TabletopEnv", "VecEnv",
           "known_suites", "libero_layout", "libero_task_ids", "make_env", "register_env", "registered_envs"]
