"""The rollout worker: a Ray actor with a copy of the policy and its own ``RolloutCollector`` over its share of the
envs (plain class here; ``ray.remote`` wraps it in ``collector.py``). Its envs are either built in its own process
(collocated placement) or live in env-worker actors it steers through a ``RemoteVecEnv`` (disaggregated).

Weights arrive versioned (``set_weights``); every rollout call names the version it must run, so a rollout never
mixes two versions of the policy.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from reinforge.distributed.env_worker import limit_threads
from reinforge.envs import make_env
from reinforge.policies import PolicyConfig, make_policy
from reinforge.policies.base import Normalizer
from reinforge.rollout import RolloutCollector, RolloutConfig
from reinforge.types import RolloutBatch


class RolloutWorker:
    def __init__(self, policy: tuple[PolicyConfig, Normalizer, dict[str, torch.Tensor]], rollout: RolloutConfig,
                 collector_kw: dict[str, Any], env: tuple, *, seed: int, threads: int = 1, device: str = "cpu",
                 slot_offset: int = 0):
        if threads:
            limit_threads(threads)
        config, normalizer, state = policy
        self.policy = make_policy(config, normalizer)
        self.policy.load_state_dict(state)
        self.policy.to(device)
        self.version = 0  # the weights it was built with
        if env[0] == "local":  # collocated: the envs live in this process
            _, env_cfg, kwargs = env
            vec = make_env(env_cfg, **kwargs)
        else:  # disaggregated: env-worker actors
            from reinforge.distributed.remote_env import RemoteVecEnv

            _, handles, sizes, max_restarts, timeout_s = env
            vec = RemoteVecEnv(handles, sizes, max_restarts=max_restarts, timeout_s=timeout_s, owns_workers=False)
        self.collector = RolloutCollector(vec, self.policy, rollout, seed=seed, **collector_kw)
        self.collector.slot_offset = slot_offset  # per_env task assignment continues the learner's slot numbering

    def info(self) -> dict[str, Any]:
        env = self.collector.env
        return {"pid": os.getpid(), "version": self.version, "num_envs": env.num_envs,
                "env_restarts": sum(getattr(env, "restarts", [0]))}

    def set_weights(self, version: int, params: dict[str, torch.Tensor]) -> int:
        own = dict(self.policy.named_parameters())
        unknown = sorted(set(params) - set(own) - set(dict(self.policy.named_buffers())))
        if unknown:
            raise ValueError(f"weights for parameters this policy does not have: {unknown[:5]}")
        self.policy.load_state_dict(params, strict=False)
        self.version = version
        return version

    def run_episodes(self, version: int, tasks: torch.Tensor, inits: torch.Tensor, group: torch.Tensor
                     ) -> RolloutBatch | str:
        """The rollout, or ``"stale"`` when this worker does not hold weights ``version`` (it was restarted)."""
        if version != self.version:
            return "stale"
        self.policy.eval()
        with torch.no_grad():
            return self.collector.run_episodes(tasks, inits, group)

    def run_autoreset(self, version: int) -> RolloutBatch | str:
        if version != self.version:
            return "stale"
        self.policy.eval()
        batch = self.collector.run_autoreset()
        if self.collector.cfg.task_assignment == "adaptive":
            self.collector.record_outcomes(batch)
        return batch

    def task_weights(self) -> torch.Tensor:
        return self.collector.task_weights()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.collector.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.collector.load_state_dict(state)

    def close(self) -> None:
        self.collector.env.close()
