"""Shared data contracts: observation keys, policy outputs and environment step results.

An observation is a plain dict of batched tensors (leading dim B = number of envs):

- ``OBS_IMAGE``       uint8   (B, V, 3, H, W)   V camera views (view 0 = agentview, 1 = wrist)
- ``OBS_STATE``       float32 (B, S)            proprioception (LIBERO layout for the tabletop world)
- ``OBS_INSTRUCTION`` list[str] of length B     the language instruction
- ``OBS_TASK_ID``     int64   (B,)              task index inside the suite
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

OBS_IMAGE = "image"
OBS_STATE = "state"
OBS_INSTRUCTION = "instruction"
OBS_TASK_ID = "task_id"

Observation = dict[str, Any]


@dataclass
class StepResult:
    """What ``VecEnv.step`` returns; every tensor has leading dim B."""

    obs: Observation
    reward: torch.Tensor  # float32 (B,)
    terminated: torch.Tensor  # bool (B,)  episode ended by success (or failure)
    truncated: torch.Tensor  # bool (B,)  episode ended by the time limit
    success: torch.Tensor  # bool (B,)  the task's success predicate holds now
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyOutput:
    """What ``Policy.act`` returns.

    ``actions`` is (B, H, D) in [-1, 1]; ``replay`` holds whatever ``evaluate`` needs to recompute the
    same log-prob exactly (sampled token ids, the denoising chain, the SDE step index, ...).
    """

    actions: torch.Tensor
    log_prob: torch.Tensor | None = None
    value: torch.Tensor | None = None
    replay: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Actor(Protocol):
    """Anything that maps observations to action chunks (policies, the scripted expert, random)."""

    def act(self, obs: Observation, *, mode: str = "greedy", temperature: float = 1.0) -> PolicyOutput: ...
