"""``MetaWorldEnv``: MetaWorld v3 (Sawyer arm, 50 tasks) as a ``VecEnv``, one MuJoCo env per slot, in process.

- Suites: ``"mt10"``, ``"mt50"``, one task name (``"pick-place-v3"``) or a comma list of task names; one split
  (``"train"``). Any slot can run any task of the suite; it gets that task's MuJoCo env at ``reset``.
- Initial states: the 50 fixed variations (object and goal positions) per task of MetaWorld's MT1 sampler, in
  three disjoint banks ``"eval"`` (seed 0), ``"train"`` (seed 1) and ``"val"`` (seed 2); see ``tasks.py``. The
  same (task, init id) always gives the same first observation.
- Actions (B, 4) in [-1, 1]: ``dx, dy, dz`` move the hand's mocap target by up to 1 cm per step, ``gripper`` is
  the finger command (-1 open, +1 close, as in LIBERO). NaN or inf raises.
- Observations: ``image`` (B, V, 3, H, W) uint8 from ``cameras`` (default ``corner``, a third-person view, and
  ``gripperPOV``, looking down from the hand), upright; ``state`` (B, 4) float32 proprio: hand position and
  gripper opening (0 closed .. 1 open), the first 4 entries of MetaWorld's 39-dim observation. Objects and the
  goal are NOT in ``state``: the policy sees them in the images. The full observation stays inside the adapter
  as privileged state for the scripted expert (``make_expert``: MetaWorld's own scripted policies).
- Control runs at 80 Hz (MuJoCo timestep 2.5 ms x frame skip 5). Success is MetaWorld's ``info["success"]``;
  the reward is 1 on the first step it holds, which ends the episode (terminated). Episodes are truncated after
  ``max_episode_steps`` (default 200, where MetaWorld uses 500: its scripted experts finish every task but
  push-back in under 200 steps, most in under 120).
- ``render_quality="fast"`` turns shadows and multisampling off (~6x faster software rendering, another look).

The env never resets itself: reset finished envs with ``reset(..., mask=done)``. ``step_chunk`` renders once
per chunk and does not step inactive or finished envs.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from reinforge.envs.base import ChunkResult, EnvMemory, EnvSpec, Task, VecEnv, checked_actions, checked_indices
from reinforge.envs.metaworld.sim import RenderQuality, SimPool, TaskSim
from reinforge.envs.metaworld.tasks import INIT_BANKS, NUM_INIT_STATES, InitBank, init_states, instruction, suite_tasks
from reinforge.types import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_TASK_ID, Actor, Observation, StepResult

ACTION_NAMES = ("dx", "dy", "dz", "gripper")
STATE_NAMES = ("eef_x", "eef_y", "eef_z", "gripper_opening")
DEFAULT_MAX_EPISODE_STEPS = 200
# memory of one env (its MuJoCo model, data and renderer), MiB: 10 and 40 envs of mt10 at 64 px took 967 and 3714
# MiB more PSS than none (metaworld 3.1.1), ~92 per env; rounded up
ENV_MB = 100.0


def _suite_name(suite: str, names: tuple[str, ...]) -> str:
    key = suite.strip().lower()
    return key if key in ("mt10", "mt50") else ",".join(names)


class MetaWorldEnv(VecEnv):
    """B MetaWorld envs of one suite, stepped one after the other in this process."""

    @classmethod
    def memory_estimate(cls, num_envs: int, *, suite: str = "mt10", **kwargs: Any) -> EnvMemory:
        """~0.1 GB per env (measured, see ``ENV_MB``); a suite of several tasks keeps up to one idle sim per env
        for slots that switch back to a task, so up to twice that."""
        several = suite.strip().lower() in ("mt10", "mt50") or "," in suite
        return EnvMemory(per_env_mb=ENV_MB * (2 if several else 1), detail="(up to, with idle task sims)" if several
                         else "")

    def __init__(self, suite: str = "mt10", num_envs: int = 1, *, split: str = "train",
                 image_size: int | tuple[int, int] = 64, init_bank: InitBank = "eval",
                 max_episode_steps: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 cameras: Sequence[str] = ("corner", "gripperPOV"), render_quality: RenderQuality = "fast",
                 render: bool = True):
        if split != "train":
            raise ValueError(f"MetaWorld suites have only the split 'train' (no held-out tasks), got {split!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if init_bank not in INIT_BANKS:
            raise ValueError(f"unknown init_bank {init_bank!r}; use one of {list(INIT_BANKS)}")
        if render_quality not in ("default", "fast"):
            raise ValueError(f"render_quality must be 'default' or 'fast', got {render_quality!r}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        limit = int(max_episode_steps or DEFAULT_MAX_EPISODE_STEPS)
        if limit < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {limit}")
        names = suite_tasks(suite)
        self.num_envs, self.device, self.init_bank = int(num_envs), torch.device(device), init_bank
        self.render_images = bool(render)
        self._task_names = names
        make = functools.partial(TaskSim, image_size=(int(h), int(w)), cameras=tuple(cameras),
                                 quality=render_quality)
        self._pool = SimPool(self.num_envs, make, max_idle=self.num_envs)
        self._finalizer = weakref.finalize(self, self._pool.close)
        probe = make(names[0])  # checks the camera names; kept for the first reset
        self._pool.release(probe)
        self.spec = EnvSpec(
            env="metaworld", suite=_suite_name(suite, names), split="train",
            tasks=tuple(Task(n, instruction(n)) for n in names), max_episode_steps=limit,
            control_hz=probe.control_hz, action_names=ACTION_NAMES, state_names=STATE_NAMES,
            camera_names=tuple(cameras) if render else (), image_size=(int(h), int(w)),
            num_init_states=NUM_INIT_STATES, init_banks=INIT_BANKS, splits=("train",), snapshot=False, expert=True,
            embodiment="sawyer")
        self._rng = np.random.default_rng(seed)
        B, V = self.num_envs, len(self.spec.camera_names)
        self._task = np.zeros(B, dtype=np.int64)
        self._init = np.zeros(B, dtype=np.int64)
        self._elapsed = np.zeros(B, dtype=np.int64)
        self._success = np.zeros(B, dtype=bool)
        self._rewarded = np.zeros(B, dtype=bool)  # the success reward was paid this episode
        self._full_obs = np.zeros((B, 39))
        self._images = np.zeros((B, V, 3, int(h), int(w)), dtype=np.uint8)
        self._started = False

    # ------------------------------------------------------------ what callers may read

    @property
    def task_names(self) -> tuple[str, ...]:
        return self._task_names

    @property
    def task_id(self) -> torch.Tensor:
        return torch.from_numpy(self._task.copy())

    @property
    def init_id(self) -> torch.Tensor:
        return torch.from_numpy(self._init.copy())

    @property
    def instructions(self) -> list[str]:
        return [self.spec.tasks[i].instruction for i in self._task.tolist()]

    def current_tasks(self) -> list[str]:
        """The task name each env runs now."""
        return [self._task_names[i] for i in self._task.tolist()]

    def privileged_obs(self) -> np.ndarray:
        """(B, 39) MetaWorld's full observation (hand, gripper, objects, previous frame, goal): for the expert."""
        return self._full_obs.copy()

    # ------------------------------------------------------------ contract

    def reset(self, task_ids=0, init_ids=None, seed: int | None = None, mask: torch.Tensor | None = None
              ) -> Observation:
        """Reset envs to ``task_ids`` (int or (B,)) from initial states ``init_ids`` of the env's bank
        (None: drawn from the env's seeded generator; ``seed`` reseeds it). With ``mask`` (B,) bool only
        those envs are reset; the others keep their state. Returns the observation of every env."""
        B = self.num_envs
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        task = checked_indices(task_ids, B, "task_ids", self.spec.num_tasks)
        if init_ids is None:
            init = self._rng.integers(0, NUM_INIT_STATES, size=B)
        else:
            init = checked_indices(init_ids, B, "init_ids", NUM_INIT_STATES)
        m = np.ones(B, dtype=bool) if mask is None else np.asarray(torch.as_tensor(mask, dtype=torch.bool).cpu())
        if m.shape != (B,):
            raise ValueError(f"mask must have shape ({B},), got {m.shape}")
        if not self._started:
            m = np.ones(B, dtype=bool)  # the first reset initialises every env
            self._started = True
        envs = np.flatnonzero(m).tolist()
        self._pool.assign({b: self._task_names[task[b]] for b in envs})
        for b in envs:
            sim = self._pool[b]
            self._full_obs[b] = sim.reset(init_states(sim.task, self.init_bank)[init[b]])
            if self.render_images:
                self._images[b] = sim.render()
        self._task[m], self._init[m], self._elapsed[m] = task[m], init[m], 0
        self._success[m] = self._rewarded[m] = False
        return self._observe()

    def step(self, actions: torch.Tensor) -> StepResult:
        a = self._check_actions(actions, (self.num_envs, self.action_dim))
        reward = np.array([self._advance(b, a[b]) for b in range(self.num_envs)], dtype=np.float32)
        self._render(range(self.num_envs))
        success = torch.from_numpy(self._success.copy())
        truncated = torch.from_numpy((self._elapsed >= self.max_episode_steps) & ~self._success)
        elapsed = torch.from_numpy(self._elapsed.copy())
        return StepResult(obs=self._observe(), reward=torch.from_numpy(reward), terminated=success.clone(),
                          truncated=truncated, success=success, info={"elapsed": elapsed})

    def step_chunk(self, actions: torch.Tensor, active: torch.Tensor | None = None) -> ChunkResult:
        """Execute a chunk (B, H, 4); images are rendered once, after the chunk. Envs that finish mid-chunk stop
        there; envs where ``active`` (B,) is False are not stepped at all (their results are False / 0)."""
        if not (isinstance(actions, (torch.Tensor, np.ndarray)) and actions.ndim == 3):
            raise ValueError(f"step_chunk expects actions of shape (num_envs, H, {self.action_dim})")
        B, H = self.num_envs, actions.shape[1]
        a = self._check_actions(actions, (B, H, self.action_dim))
        alive = np.ones(B, dtype=bool) if active is None else np.asarray(
            torch.as_tensor(active, dtype=torch.bool).cpu())
        reward = np.zeros((B, H), dtype=np.float32)
        valid = np.zeros((B, H), dtype=bool)
        stepped = np.flatnonzero(alive).tolist()
        for b in stepped:
            for h in range(H):
                reward[b, h] = self._advance(b, a[b, h])
                valid[b, h] = True
                if self._success[b] or self._elapsed[b] >= self.max_episode_steps:
                    break
        self._render(stepped)
        success = self._success & alive
        truncated = (self._elapsed >= self.max_episode_steps) & ~self._success & alive
        t = torch.from_numpy
        return ChunkResult(self._observe(), t(reward), t(valid), t(success.copy()), t(truncated), t(success),
                           {"elapsed": t(self._elapsed.copy()), "failed": torch.zeros(B, dtype=torch.bool)})

    def make_expert(self, *, noise: float = 0.0, seed: int = 0) -> Actor:
        """MetaWorld's scripted policy of each env's task, reading the full (privileged) observation."""
        from reinforge.envs.metaworld.expert import MetaWorldExpert

        return MetaWorldExpert(self, noise=noise, seed=seed)

    def close(self) -> None:
        """Close every MuJoCo env and renderer (also done when the env is garbage collected)."""
        self._finalizer()

    # ------------------------------------------------------------ internals

    def _check_actions(self, actions, shape: tuple[int, ...]) -> np.ndarray:
        return checked_actions(actions, shape, ACTION_NAMES)

    def _advance(self, b: int, action: np.ndarray) -> float:
        """Step env ``b``; returns its reward (1 on the first step its success holds)."""
        obs, success = self._pool[b].step(action)
        self._full_obs[b] = obs
        self._elapsed[b] += 1
        self._success[b] = success
        first = success and not self._rewarded[b]
        self._rewarded[b] |= success
        return float(first)

    def _render(self, envs) -> None:
        if self.render_images:
            for b in envs:
                self._images[b] = self._pool[b].render()

    def _observe(self) -> Observation:
        obs: Observation = {
            OBS_STATE: torch.from_numpy(self._full_obs[:, :4].astype(np.float32)).to(self.device),
            OBS_INSTRUCTION: self.instructions,
            OBS_TASK_ID: torch.from_numpy(self._task.copy()).to(self.device),
        }
        if self.render_images:
            obs[OBS_IMAGE] = torch.from_numpy(self._images.copy()).to(self.device)
        return obs

    def __repr__(self) -> str:
        return (f"MetaWorldEnv(suite={self.spec.suite!r}, num_envs={self.num_envs}, "
                f"image_size={self.spec.image_size}, cameras={self.spec.camera_names})")
