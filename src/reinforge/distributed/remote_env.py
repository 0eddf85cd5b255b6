"""``RemoteVecEnv``: a VecEnv whose envs live in env-worker actors, so the unchanged ``RolloutCollector`` steps
them. Rows are laid out worker by worker and, inside a worker, pipeline stage by stage.

``step_chunk_async`` sends each worker its rows' actions and returns at once (``async_steps``): with
``rollout.pipeline_stages`` > 1 the collector runs the policy on one stage while the workers step another.

Faults: a call to a worker that died (or did not answer within ``timeout_s``: it is then killed and restarted)
comes back as failed rows: truncated, ``info["failed"]`` True, no reward, the previous observation. Ray restarts the
actor (``max_restarts``); its envs are rebuilt and reset at their next reset. Restarts are counted per worker by
process id (``restarts``); a worker that died more than ``max_restarts`` times stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from reinforge.distributed.runtime import import_ray, stop_actors, wait_for_pid
from reinforge.envs import ChunkResult, VecEnv
from reinforge.types import Observation, StepResult

log = logging.getLogger(__name__)

RESTART_TIMEOUT_S = 300.0  # how long a crashed worker may take to come back (process start + env build)


class _Pending:
    def __init__(self, env: RemoteVecEnv, calls: list, shape: tuple[int, int], active: torch.Tensor | None):
        self.env, self.calls, self.shape, self.active = env, calls, shape, active

    def result(self) -> ChunkResult:
        return self.env._gather(self.calls, self.shape, self.active)


class RemoteVecEnv(VecEnv):
    """``num_envs`` envs spread over env-worker actors (``workers[k]`` holds ``sizes[k][s]`` envs in stage s)."""

    async_steps = True

    def __init__(self, workers: Sequence[Any], sizes: Sequence[Sequence[int]], *, max_restarts: int = 3,
                 timeout_s: float = 600.0, owns_workers: bool = True):
        self.ray = import_ray()
        self.workers, self.sizes = list(workers), [list(s) for s in sizes]
        self.max_restarts, self.timeout_s, self.owns_workers = max_restarts, timeout_s, owns_workers
        if len({len(s) for s in self.sizes}) != 1:
            raise ValueError("every env worker must hold the same number of pipeline stages")
        self.num_stages = len(self.sizes[0])
        infos = []
        for k, w in enumerate(self.workers):  # a worker that cannot start says why, in one line
            try:
                infos.append(self.ray.get(w.info.remote(), timeout=max(self.timeout_s, RESTART_TIMEOUT_S)))
            except Exception as e:  # noqa: BLE001 - its constructor failed, or it never came up
                from reinforge.distributed.collector import worker_error

                raise RuntimeError(f"env worker {k} could not start: {worker_error(e)}") from None
        self.spec = infos[0]["spec"]
        self.pids = [i["pid"] for i in infos]
        self.restarts = [0] * len(self.workers)
        self.slices: list[tuple[int, int, torch.Tensor]] = []  # (worker, stage, rows)
        off = 0
        for k, stages in enumerate(self.sizes):
            for s, n in enumerate(stages):
                self.slices.append((k, s, torch.arange(off, off + n)))
                off += n
        self.num_envs = off
        self.device = torch.device("cpu")
        self._obs: Observation | None = None
        self._lost = torch.zeros(off, dtype=torch.bool)  # rows a post-restart reset discarded: failed at next step

    # ------------------------------------------------------------ faults

    def _fault(self, k: int, why: str) -> None:
        """Worker ``k`` failed a call: wait for Ray to restart it and count the restart (once per new pid)."""
        try:
            pid = wait_for_pid(self.ray, self.workers[k], max(self.timeout_s, RESTART_TIMEOUT_S))
        except Exception as e:  # noqa: BLE001 - a dead actor raises one of several Ray errors
            from reinforge.distributed.collector import worker_error

            raise RuntimeError(f"env worker {k} {why} and could not be restarted: {worker_error(e)} (restarted "
                               f"{self.restarts[k]} times before; distributed.max_restarts={self.max_restarts})"
                               ) from None
        if pid != self.pids[k]:
            self.restarts[k] += 1
            self.pids[k] = pid
            log.warning("env worker %d %s; restarted as pid %d (restart %d of at most %d); its episodes are dropped",
                        k, why, pid, self.restarts[k], self.max_restarts)

    def _get(self, k: int, ref: Any) -> Any:
        """The result of a call to worker ``k``, or None when the worker died or hung (it is then restarted)."""
        ray = self.ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(ref, timeout=self.timeout_s)
        except GetTimeoutError:
            log.warning("env worker %d did not answer within %.0f s: killing it", k, self.timeout_s)
            ray.kill(self.workers[k], no_restart=False)
            self._fault(k, f"hung for {self.timeout_s:.0f} s")
        except (RayActorError, ActorUnavailableError):
            self._fault(k, "died")
        except RayTaskError as e:  # a Python error inside the env: the user's to see, with its own type
            raise e.as_instanceof_cause() from None
        return None

    def _call(self, k: int, fn, *, retry: bool) -> Any:
        for _ in range(self.max_restarts + 2):
            out = self._get(k, fn(self.workers[k]))
            if out is not None or not retry:
                return out
        raise RuntimeError(f"env worker {k} kept failing (distributed.max_restarts={self.max_restarts})")

    # ------------------------------------------------------------ the contract

    def _rows_tensor(self, x: Any, dtype: torch.dtype) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=dtype)
        return t.expand(self.num_envs).clone() if t.dim() == 0 else t.cpu()

    def _store(self, rows: torch.Tensor, obs: Observation) -> None:
        if self._obs is None:
            if rows.numel() != self.num_envs:  # the first reset covers every env, in slices
                self._obs = {k: ([None] * self.num_envs if isinstance(v, list)
                                 else torch.zeros((self.num_envs, *v.shape[1:]), dtype=v.dtype))
                             for k, v in obs.items()}
            else:
                self._obs = {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in obs.items()}
                return
        for key, v in obs.items():
            if isinstance(v, list):
                for i, r in enumerate(rows.tolist()):
                    self._obs[key][r] = v[i]
            else:
                self._obs[key][rows] = v

    def _observation(self) -> Observation:
        return {k: (list(v) if isinstance(v, list) else v.clone()) for k, v in self._obs.items()}

    def reset(self, task_ids, init_ids=None, seed: int | None = None, mask: torch.Tensor | None = None
              ) -> Observation:
        tasks = self._rows_tensor(task_ids, torch.int64)
        inits = None if init_ids is None else self._rows_tensor(init_ids, torch.int64)
        mask = None if mask is None else mask.cpu().bool()
        if mask is not None and self._obs is None:
            raise ValueError("the first reset must reset every env (mask=None)")
        calls = []
        for k, s, rows in self.slices:
            m = None if mask is None else mask[rows]
            if m is not None and not bool(m.any()):
                continue
            args = (s, tasks[rows], None if inits is None else inits[rows], m, seed)
            calls.append((k, rows, m, args))
        refs = [self.workers[k].reset.remote(*args) for k, _, _, args in calls]
        for (k, rows, m, args), ref in zip(calls, refs):
            out = self._get(k, ref)
            if out is None:  # died during the reset: ask the restarted worker (a fresh env resets every row)
                out = self._call(k, lambda w, a=args: w.reset.remote(*a), retry=True)
            obs, lost = out
            self._store(rows, obs)
            if m is not None:
                self._lost[rows[m]] = False
            else:
                self._lost[rows] = False
            if lost is not None:
                self._lost[rows[lost]] = True
        return self._observation()

    def step_chunk_async(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> _Pending:
        if self._obs is None:
            raise RuntimeError("reset() the env before stepping it")
        actions = actions.cpu()
        active = None if active is None else active.cpu().bool()
        calls = []
        for k, s, rows in self.slices:
            a = None if active is None else active[rows]
            if a is not None and not bool(a.any()):
                continue
            calls.append((k, rows, a, self.workers[k].step_chunk.remote(s, actions[rows], a)))
        return _Pending(self, calls, tuple(actions.shape[:2]), active)

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        return self.step_chunk_async(actions, active).result()

    def _gather(self, calls: list, shape: tuple[int, int], active: torch.Tensor | None) -> ChunkResult:
        B, H = shape
        reward, valid = torch.zeros(B, H), torch.zeros(B, H, dtype=torch.bool)
        term, trunc, success, failed = (torch.zeros(B, dtype=torch.bool) for _ in range(4))
        for k, rows, a, ref in calls:
            res = self._get(k, ref)
            stepped = rows if a is None else rows[a]
            if isinstance(res, str):  # "not ready": restarted since this env's reset (e.g. while idle)
                self._fault(k, "was restarted")
                res = None
            if res is None:  # the worker died (or was restarted since this env's reset): its episodes are lost
                failed[stepped] = True
                continue
            reward[rows], valid[rows] = res.reward, res.valid
            term[rows], trunc[rows], success[rows] = res.terminated, res.truncated, res.success
            if "failed" in res.info:  # a fault inside the env itself (e.g. a LIBERO subprocess)
                failed[rows] |= res.info["failed"].bool()
            self._store(rows, res.obs)
        on = torch.ones(B, dtype=torch.bool) if active is None else active
        lost = self._lost & on
        if bool(lost.any()):
            failed |= lost
            self._lost &= ~lost
        if bool(failed.any()):
            reward[failed], valid[failed] = 0.0, False
            term &= ~failed
            success &= ~failed
            trunc |= failed
        return ChunkResult(self._observation(), reward, valid, term, trunc, success, {"failed": failed})

    def step(self, actions: torch.Tensor) -> StepResult:
        res = self.step_chunk(actions[:, None])
        return StepResult(obs=res.obs, reward=res.reward[:, 0], terminated=res.terminated, truncated=res.truncated,
                          success=res.success, info=res.info)

    def pipeline_stages(self, n: int) -> list[torch.Tensor]:
        if n != self.num_stages:
            raise ValueError(f"the env workers hold {self.num_stages} pipeline stage(s), not {n}")
        return [torch.cat([rows for _, s, rows in self.slices if s == stage]) for stage in range(n)]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Every worker's envs, per stage. A stage whose worker died or restarted since its last reset has no
        episodes to save: it is recorded as lost (``w{k}.s{s}.lost``), and its rows fail at their next step, in
        this run and in a run resumed from the checkpoint."""
        snap = {}
        for k, s, rows in self.slices:
            part = self._get(k, self.workers[k].snapshot.remote(s))
            if isinstance(part, str):
                self._fault(k, "was restarted")
            if not isinstance(part, dict):
                self._lost[rows] = True
                snap[f"w{k}.s{s}.lost"] = torch.ones(1)
                continue
            snap.update({f"w{k}.s{s}.{key}": v for key, v in part.items()})
        return snap

    def restore(self, snap: dict[str, torch.Tensor]) -> Observation:
        lost = []
        self._lost.zero_()
        for k, s, rows in self.slices:
            prefix = f"w{k}.s{s}."
            part = {key[len(prefix):]: v for key, v in snap.items() if key.startswith(prefix)}
            if not part:
                raise ValueError(f"the checkpoint's env snapshot was taken with another env worker layout (no "
                                 f"{prefix}*): resume with the same distributed.env_workers and "
                                 "rollout.pipeline_stages")
            if "lost" in part:  # its episodes were gone when the checkpoint was written: they fail at once
                lost.append(rows)
                continue
            obs = self._call(k, lambda w, s=s, p=part: w.restore.remote(s, p), retry=True)
            self._store(rows, obs)
        if self._obs is None:
            raise ValueError("the checkpoint's env snapshot holds no running envs; resume with resume=false")
        for rows in lost:
            self._lost[rows] = True
        return self._observation()

    def close(self) -> None:
        if self.owns_workers:
            stop_actors(self.ray, self.workers)
        self.workers = []
