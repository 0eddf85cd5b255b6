"""Shared data contracts: observation keys, policy outputs and environment step results.

An observation is a plain dict of batched tensors (leading dim B = number of envs):

- ``OBS_IMAGE``       uint8   (B, V, 3, H, W)   V camera views (view 0 = agentview, 1 = wrist)
- ``OBS_STATE``       float32 (B, S)            proprioception (LIBERO layout for the tabletop world)
- ``OBS_INSTRUCTION`` list[str] of length B     the language instruction
- ``OBS_TASK_ID``     int64   (B,)              task index inside the suite

Optionally ``OBS_IMAGE_FEATURES`` float32 (B, N, d): the frozen vision encoder's tokens, computed once during a
rollout so that RL updates with a frozen vision encoder skip it (policies use them instead of ``OBS_IMAGE``).
Or ``OBS_PREFIX`` float32 (B, T, d) with ``OBS_PREFIX_PAD`` bool (B, T): a frozen backbone's fused tokens (images,
instruction and state), padded to a fixed length, for policies whose action head reads only those
(``Policy.cacheable_prefix``); an update with the backbone frozen then runs the action head alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

OBS_IMAGE = "image"
OBS_STATE = "state"
OBS_INSTRUCTION = "instruction"
OBS_TASK_ID = "task_id"
OBS_IMAGE_FEATURES = "image_features"
OBS_PREFIX = "prefix"
OBS_PREFIX_PAD = "prefix_pad"

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


@dataclass
class RolloutBatch:
    """Everything the learner needs from a rollout; nothing it must re-simulate.

    Per policy call, padded to (B, T) for B env rows and T chunk steps (``valid`` marks real calls):

    - ``obs``: ``OBS_IMAGE`` (B, T, V, 3, H, W) uint8 or ``OBS_IMAGE_FEATURES`` (B, T, N, d), ``OBS_STATE``
      (B, T, S), ``OBS_TASK_ID`` (B, T); instructions are ``instructions[task_id]``.
    - ``replay``: the policy's replay tensors (B, T, ...), ``log_prob`` (B, T) or per token (B, T, H, D),
      ``value`` (B, T) (None without a value head) and ``next_value`` (B, T): V of the state after the chunk
      where the episode was truncated or the rollout cut (bootstrap), else the next step's value.
    - ``reward`` (B, T) summed over the chunk's env steps, ``terminated`` / ``truncated`` (B, T): the episode
      ended inside this chunk, ``env_steps`` (B, T) env steps executed in the chunk.

    Per episode (one per row in episodic mode; in auto-reset mode rows hold several episodes):
    ``episode_success``, ``episode_length``, ``episode_task``, ``episode_init`` (E,) and, for GRPO,
    ``group`` (B,) the group id of each row (rows of a group share task and initial state);
    ``episode_failed`` (E,): the episode was lost to a simulator fault (e.g. a crashed env worker); it ends as a
    truncation, and GRPO drops its group. ``lost_episodes``: episodes that left no rows at all (their rollout
    worker died), counted in ``rollout/failed_episodes``.
    """

    obs: dict[str, torch.Tensor]
    instructions: list[str]
    replay: dict[str, torch.Tensor]
    log_prob: torch.Tensor
    value: torch.Tensor | None
    next_value: torch.Tensor | None
    reward: torch.Tensor
    valid: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    env_steps: torch.Tensor
    episode_success: torch.Tensor
    episode_length: torch.Tensor
    episode_task: torch.Tensor
    episode_init: torch.Tensor
    group: torch.Tensor | None = None
    episode_failed: torch.Tensor | None = None  # (E,) bool: lost to a simulator fault, counted, never a success
    lost_episodes: int = 0  # episodes lost with their data (a rollout worker died): counted only
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.valid.shape[0]

    @property
    def num_samples(self) -> int:
        return int(self.valid.sum())

    def sample_obs(self, rows: torch.Tensor, steps: torch.Tensor) -> Observation:
        """The observations of policy calls (rows[i], steps[i]) as a policy input batch."""
        obs: Observation = {k: v[rows, steps] for k, v in self.obs.items()}
        obs[OBS_INSTRUCTION] = [self.instructions[i] for i in obs[OBS_TASK_ID].tolist()]
        return obs
