"""The vectorised environment contract and the environment registry.

Every simulator (the built-in tabletop world, LIBERO, a learned world model, ...) is a ``VecEnv``:
B envs stepped together, tensors in and out, observation keys from ``reinforge.types``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reinforge.types import Observation, StepResult


@dataclass
class ChunkResult:
    """What ``VecEnv.step_chunk`` returns after executing up to H actions per env.

    Envs that end mid-chunk stop there: ``valid`` (B, H) marks the steps that were executed, the rest of
    their chunk is ignored. ``obs`` is the observation after the last executed step.
    """

    obs: Observation
    reward: torch.Tensor  # float32 (B, H), 0 on invalid steps
    valid: torch.Tensor  # bool (B, H)
    terminated: torch.Tensor  # bool (B,)
    truncated: torch.Tensor  # bool (B,)
    success: torch.Tensor  # bool (B,)


class VecEnv(ABC):
    """B environments stepped together. Actions (B, action_dim) float32 in [-1, 1]."""

    num_envs: int
    action_dim: int
    max_episode_steps: int

    @abstractmethod
    def reset(self, task_ids: torch.Tensor | Sequence[int] | int,
              init_ids: torch.Tensor | Sequence[int] | None = None, seed: int | None = None,
              mask: torch.Tensor | None = None) -> Observation:
        """Reset the envs (all, or those where ``mask`` is True) to the given tasks and initial states."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per env."""

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        """Apply an action chunk (B, H, D); envs that finish mid-chunk stop. Generic fallback for envs
        without a fast path (envs where ``active`` is False are stepped but their results ignored)."""
        B, H, _ = actions.shape
        reward = torch.zeros(B, H)
        valid = torch.zeros(B, H, dtype=torch.bool)
        done = torch.zeros(B, dtype=torch.bool) if active is None else ~active.cpu().bool()
        term = torch.zeros(B, dtype=torch.bool)
        trunc = torch.zeros(B, dtype=torch.bool)
        success = torch.zeros(B, dtype=torch.bool)
        obs: Observation = {}
        for h in range(H):
            res = self.step(actions[:, h])
            valid[:, h] = ~done
            reward[:, h] = torch.where(done, 0.0, res.reward.cpu())
            term |= res.terminated.cpu() & ~done
            trunc |= res.truncated.cpu() & ~done
            success |= res.success.cpu() & ~done
            done |= res.terminated.cpu() | res.truncated.cpu()
            obs = res.obs
        return ChunkResult(obs, reward, valid, term, trunc, success)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (subprocesses, renderers). Default: nothing to do."""


_ENVS: dict[str, Callable[..., VecEnv]] = {}


def register_env(name: str, factory: Callable[..., VecEnv]) -> None:
    """Register an environment factory; refuses to overwrite an existing name."""
    if name in _ENVS:
        raise ValueError(f"environment {name!r} is already registered")
    _ENVS[name] = factory


def make_env(name: str, **kwargs: Any) -> VecEnv:
    """Build a registered environment, e.g. ``make_env("tabletop", suite="spatial", num_envs=16)``."""
    if name not in _ENVS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(_ENVS)}")
    return _ENVS[name](**kwargs)
