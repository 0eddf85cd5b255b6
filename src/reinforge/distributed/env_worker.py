"""The env worker: a Ray actor holding one shard of the rollout's envs (plain class here; ``ray.remote`` wraps it
in ``collector.py``).

A worker holds one ``VecEnv`` per pipeline stage, built with ``make_env`` from the run's ``env`` section, so any
registered simulator runs in it. A restarted worker (Ray re-runs ``__init__`` after a crash) holds fresh envs that
were never reset: stepping one returns ``None`` (its episodes are lost), and a partial reset resets the whole env
and reports which rows lost their episodes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from reinforge.envs import ChunkResult, EnvConfig, make_env
from reinforge.types import Observation


def to_cpu(obs: Observation) -> Observation:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in obs.items()}


def limit_threads(n: int) -> None:
    """At most ``n`` compute threads in this worker (torch and, when installed, numba's pool): workers sharing a
    node must not each spawn one thread per core."""
    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


class EnvWorker:
    def __init__(self, env: EnvConfig, kwargs: dict[str, Any], sizes: list[int], seed: int, threads: int = 1):
        if threads:
            limit_threads(threads)
        self.envs = [make_env(env, **{**kwargs, "num_envs": n, "seed": seed + 7919 * s}) for s, n in enumerate(sizes)]
        self.ready = [False] * len(sizes)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "spec": self.envs[0].spec}

    def reset(self, stage: int, tasks: torch.Tensor, inits: torch.Tensor | None, mask: torch.Tensor | None,
              seed: int | None = None) -> tuple[Observation, torch.Tensor | None]:
        """(observation, rows whose running episode this reset discarded, or None)."""
        lost = None
        if not self.ready[stage] and mask is not None and not bool(mask.all()):
            lost, mask = ~mask, None  # a fresh env cannot reset a subset: every row starts over
        obs = self.envs[stage].reset(tasks, inits, seed=seed, mask=mask)
        self.ready[stage] = True
        return to_cpu(obs), lost

    def step_chunk(self, stage: int, actions: torch.Tensor, active: torch.Tensor | None) -> ChunkResult | str:
        if not self.ready[stage]:
            return "not ready"  # restarted since this env's last reset: its episodes are gone
        env = self.envs[stage]
        res = env.step_chunk(actions.to(env.device), None if active is None else active.to(env.device))
        return ChunkResult(to_cpu(res.obs), res.reward.cpu(), res.valid.cpu(), res.terminated.cpu(),
                           res.truncated.cpu(), res.success.cpu(),
                           {k: v.cpu() for k, v in res.info.items() if isinstance(v, torch.Tensor)})

    def snapshot(self, stage: int) -> dict[str, torch.Tensor] | str:
        if not self.ready[stage]:
            return "not ready"
        return self.envs[stage].snapshot()

    def restore(self, stage: int, snap: dict[str, torch.Tensor]) -> Observation:
        obs = self.envs[stage].restore(snap)
        self.ready[stage] = True
        return to_cpu(obs)

    def close(self) -> None:
        for env in self.envs:
            env.close()
