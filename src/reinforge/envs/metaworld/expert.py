"""The scripted expert of MetaWorld: the benchmark's own hand-written policy of each task (``metaworld.policies``).

Each policy maps MetaWorld's full 39-dim observation (hand, gripper, object poses, previous frame, goal) to an
action; the adapter keeps that observation as privileged state, so the expert sees what the policy under training
must read from the images. The policies are stateless; their actions are clipped to [-1, 1] (MetaWorld clips
them too). ``noise`` adds Gaussian noise to the executed translation (dx, dy, dz) for diverse demos, and
``replay["clean_action"]`` holds the noise-free action (DART-style labels, Laskey et al., 2017).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from metaworld.policies import ENV_POLICY_MAP

from reinforge.types import Observation, PolicyOutput

if TYPE_CHECKING:
    from reinforge.envs.metaworld.env import MetaWorldEnv


class MetaWorldExpert:
    """Batched MetaWorld scripted policies bound to a ``MetaWorldEnv`` (one per task of its suite)."""

    def __init__(self, env: MetaWorldEnv, noise: float = 0.0, seed: int = 0):
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        self.env, self.noise = env, float(noise)
        self._rng = np.random.default_rng(seed)
        self._policies = {name: ENV_POLICY_MAP[name]() for name in env.task_names}

    def act(self, obs: Observation | None = None, *, mode: str = "greedy", temperature: float = 1.0
            ) -> PolicyOutput:
        """One action per env as a chunk of length 1: actions (B, 1, 4), ``replay["clean_action"]`` (B, 4)."""
        full = self.env.privileged_obs()
        with warnings.catch_warnings():  # the policies warn whenever a proportional gain saturates
            warnings.simplefilter("ignore")
            clean = np.stack([self._policies[name].get_action(o) for name, o in zip(self.env.current_tasks(), full)])
        clean = np.clip(clean, -1.0, 1.0).astype(np.float32)
        action = clean.copy()
        if self.noise > 0:
            action[:, :3] = np.clip(action[:, :3] + self._rng.normal(0.0, self.noise, (len(action), 3)), -1.0, 1.0)
        dev = self.env.device
        return PolicyOutput(actions=torch.from_numpy(action)[:, None].to(dev),
                            replay={"clean_action": torch.from_numpy(clean).to(dev)})
