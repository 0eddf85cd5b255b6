"""Vectorised environments: the contract, the registry and the built-in tabletop world."""

from __future__ import annotations

from reinforge.envs.base import ChunkResult, VecEnv, make_env, register_env
from reinforge.envs.tabletop.env import TabletopEnv

register_env("tabletop", TabletopEnv)

__all__ = ["ChunkResult", "TabletopEnv", "VecEnv", "make_env", "register_env"]
