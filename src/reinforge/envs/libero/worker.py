"""The LIBERO side of the adapter: what runs inside a worker process (and nothing the parent needs to import
LIBERO for).

A worker holds a few env slots. Each slot owns one LIBERO ``OffScreenRenderEnv`` (one per task: a LIBERO env is
built from its task's BDDL file, so a slot rebuilds its env when it is reset to another task). Commands arrive
through a pipe, observations leave through one shared-memory block per worker (``ObsLayout``), the small per-step
results (rewards, masks, flags) go back through the pipe.

Rendering is done here, not by robosuite's camera observables (the envs are built with ``use_camera_obs=False``):
``render_views`` draws every camera once, after the last step of a chunk, at the requested size, and flips both
image axes (MuJoCo's image rows start at the bottom, so LIBERO's images are upside down). ``configure_rendering``
fixes robosuite 1.4 for several envs in one process (see there) and applies ``render_quality="fast"``.

Each reset seeds LIBERO's global numpy generator from (seed, task, init id): the official init states fix the
joint state but not where fixtures (cabinets, stoves, table regions) are jittered by the placement samplers, so
without it two resets to the same init state would differ in the images.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from reinforge.envs.watchdog import die_with_parent

STATE_DIM = 8
# the no-op the RL papers step while objects settle after an init state: no motion, gripper open
SETTLE_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


@dataclass(frozen=True)
class ObsLayout:
    """One worker's shared-memory block: images uint8 (n, V, 3, H, W), then state float32 (n, 8)."""

    num_envs: int
    num_views: int
    height: int
    width: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (self.num_envs, self.num_views, 3, self.height, self.width)

    @property
    def state_offset(self) -> int:
        return -(-math.prod(self.image_shape) // 8) * 8  # 8-byte aligned

    @property
    def nbytes(self) -> int:
        return self.state_offset + self.num_envs * STATE_DIM * 4

    def arrays(self, buf: Any) -> tuple[np.ndarray, np.ndarray]:
        """(images, state) views into ``buf`` (a shared memory's ``buf``)."""
        images = np.ndarray(self.image_shape, dtype=np.uint8, buffer=buf)
        state = np.ndarray((self.num_envs, STATE_DIM), dtype=np.float32, buffer=buf, offset=self.state_offset)
        return images, state


@dataclass(frozen=True)
class WorkerConfig:
    suite: str
    shm_name: str
    layout: ObsLayout
    cameras: tuple[str, ...]
    render_quality: str
    settle_steps: int
    max_episode_steps: int
    parent: tuple[int, bool] = (0, False)  # ``watchdog.parent_token()`` of the process that starts the worker


def reset_seed(seed: int, task_id: int, init_id: int) -> int:
    """The seed of LIBERO's numpy generator for a reset to (task, init id): the same triple, the same start."""
    return int(np.random.SeedSequence([seed, task_id, init_id]).generate_state(1)[0])


def axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """(3,) rotation vector (axis * angle) of a unit quaternion in robosuite's (x, y, z, w) order."""
    w = min(max(float(quat_xyzw[3]), -1.0), 1.0)
    s = math.sqrt(1.0 - w * w)  # sin(angle / 2)
    if s < 1e-8:
        return np.zeros(3)
    return np.asarray(quat_xyzw[:3], dtype=np.float64) * (2.0 * math.acos(w) / s)


def proprio_state(obs: dict[str, np.ndarray]) -> np.ndarray:
    """(8,) float32: end-effector position, axis-angle orientation, the two finger joint positions."""
    return np.concatenate([obs["robot0_eef_pos"], axis_angle(obs["robot0_eef_quat"]),
                           obs["robot0_gripper_qpos"]]).astype(np.float32)


def configure_rendering(quality: str) -> None:
    """Process-wide fixes to robosuite 1.4's renderer; call once per process, before creating envs.

    - robosuite frees a render context's MuJoCo GL objects in whatever EGL context is current, which with several
      envs in one process deletes another env's textures and framebuffers (it then renders garbage). The context
      is made current before it is freed.
    - ``quality="fast"``: shadows and multisampling off (``model.vis.quality.shadowsize = offsamples = 0``) in every
      render context, set before it is created (each hard reset of a LIBERO env creates a new one).
    """
    from robosuite.utils.binding_utils import MjRenderContext

    if getattr(MjRenderContext, "_reinforge_quality", None) is not None:
        if MjRenderContext._reinforge_quality != quality:
            raise RuntimeError(f"rendering already configured as {MjRenderContext._reinforge_quality!r} in this "
                               f"process, cannot switch to {quality!r}")
        return
    free = MjRenderContext.__del__

    def free_in_own_context(self: Any) -> None:
        with contextlib.suppress(Exception):
            self.gl_ctx.make_current()
        free(self)

    MjRenderContext.__del__ = free_in_own_context
    if quality == "fast":
        make_context = MjRenderContext._set_mujoco_context_and_buffers

        def make_context_without_shadows(self: Any) -> None:
            self.model.vis.quality.shadowsize = 0
            self.model.vis.quality.offsamples = 0
            make_context(self)

        MjRenderContext._set_mujoco_context_and_buffers = make_context_without_shadows
    MjRenderContext._reinforge_quality = quality


def load_suite(suite: str) -> Any:
    """LIBERO's benchmark object of ``suite`` (its construction prints to stdout; silenced)."""
    from libero.libero import benchmark

    with contextlib.redirect_stdout(io.StringIO()):
        return benchmark.get_benchmark_dict()[suite]()


def make_libero_env(suite: Any, task_id: int, height: int, width: int, cameras: tuple[str, ...],
                    camera_obs: bool = False) -> Any:
    """LIBERO's ``OffScreenRenderEnv`` of task ``task_id``; with ``camera_obs=False`` (the adapter) robosuite
    renders nothing during steps (``render_views`` renders on demand). Never signals done (the adapter counts)."""
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    task = suite.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_names=list(cameras), camera_heights=height,
                             camera_widths=width, use_camera_obs=camera_obs, ignore_done=True)
    known = list(env.sim.model.camera_names)
    unknown = [c for c in cameras if c not in known]
    if unknown:
        env.close()
        raise ValueError(f"unknown LIBERO camera(s) {unknown}; the scene has {known}")
    return env


def render_views(env: Any, cameras: tuple[str, ...], out: np.ndarray) -> None:
    """Render every camera of ``env`` into ``out`` (V, 3, H, W) uint8, upright (both axes flipped)."""
    _, _, height, width = out.shape
    sim = env.sim
    sim._render_context_offscreen.gl_ctx.make_current()  # several envs (GL contexts) share this process
    for v, camera in enumerate(cameras):
        image = sim.render(camera_name=camera, width=width, height=height)
        out[v] = image[::-1, ::-1].transpose(2, 0, 1)


@dataclass
class _Slot:
    env: Any = None
    task_id: int = -1
    live: bool = False  # holds an episode (False before the first reset and after a worker restart)
    elapsed: int = 0
    success: bool = False
    rewarded: bool = False  # the success reward was paid this episode


class LiberoWorker:
    """The env slots of one worker process and the commands it answers (``reset``, ``step_chunk``)."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        configure_rendering(cfg.render_quality)
        self.suite = load_suite(cfg.suite)
        self._shm = SharedMemory(name=cfg.shm_name)
        self.images, self.state = cfg.layout.arrays(self._shm.buf)
        self.slots = [_Slot() for _ in range(cfg.layout.num_envs)]
        self._init_states: dict[int, np.ndarray] = {}

    def reset(self, items: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
        """Reset slots to official init states: ``items`` = (slot, task id, init id, seed) each. Returns the
        success flag of every slot."""
        cfg = self.cfg
        for slot_id, task_id, init_id, seed in items:
            slot = self.slots[slot_id]
            slot.live = False  # until this reset has succeeded
            if slot.env is None or slot.task_id != task_id:
                if slot.env is not None:
                    slot.env.close()
                    slot.env = None
                slot.env = make_libero_env(self.suite, task_id, cfg.layout.height, cfg.layout.width, cfg.cameras)
                slot.task_id = task_id
            if task_id not in self._init_states:
                self._init_states[task_id] = self.suite.get_task_init_states(task_id)
            slot.env.seed(seed)
            slot.env.reset()
            obs = slot.env.set_init_state(self._init_states[task_id][init_id])
            for _ in range(cfg.settle_steps):
                obs, *_ = slot.env.step(SETTLE_ACTION)
            slot.live, slot.elapsed, slot.rewarded = True, 0, False
            slot.success = bool(slot.env.check_success())
            self._publish(slot_id, obs)
        return {"success": np.array([s.success for s in self.slots])}

    def step_chunk(self, actions: np.ndarray, active: np.ndarray) -> dict[str, np.ndarray]:
        """Step the active slots through their chunk of ``actions`` (n, H, 7); a slot stops at success or at the
        step limit. Renders each stepped slot once, after its last step. Active slots without an episode are
        not stepped and come back ``lost``."""
        n, H = actions.shape[:2]
        reward = np.zeros((n, H), dtype=np.float32)
        valid = np.zeros((n, H), dtype=bool)
        terminated, truncated, lost = (np.zeros(n, dtype=bool) for _ in range(3))
        for i in np.flatnonzero(active).tolist():
            slot = self.slots[i]
            if not slot.live:
                lost[i] = True
                continue
            for h in range(H):
                obs, *_ = slot.env.step(actions[i, h].astype(np.float64))
                slot.elapsed += 1
                valid[i, h] = True
                slot.success = bool(slot.env.check_success())
                if slot.success:
                    reward[i, h] = 0.0 if slot.rewarded else 1.0
                    slot.rewarded = terminated[i] = True
                    break
                if slot.elapsed >= self.cfg.max_episode_steps:
                    truncated[i] = True
                    break
            self._publish(i, obs)
        return {"reward": reward, "valid": valid, "terminated": terminated, "truncated": truncated, "lost": lost,
                "success": np.array([s.success for s in self.slots]),
                "elapsed": np.array([s.elapsed for s in self.slots], dtype=np.int64)}

    def _publish(self, slot_id: int, obs: dict[str, np.ndarray]) -> None:
        slot = self.slots[slot_id]
        render_views(slot.env, self.cfg.cameras, self.images[slot_id])
        self.state[slot_id] = proprio_state(obs)

    def close(self) -> None:
        for slot in self.slots:
            if slot.env is not None:
                with contextlib.suppress(Exception):
                    slot.env.close()
                slot.env = None
        self.images = self.state = None  # release the views before closing the block
        self._shm.close()


def worker_main(conn: Connection, cfg: WorkerConfig) -> None:
    """Entry point of a worker process: answer each command ``(seq, name, *args)`` with ``(seq, "ok", result)``
    or ``(seq, "error", traceback)`` until ``(seq, "close")`` or until the parent goes away. The parent drops
    answers whose ``seq`` is not the one it waits for (left over from a call it abandoned)."""
    if cfg.parent[0]:
        die_with_parent(cfg.parent, on_orphan=lambda: _unlink(cfg.shm_name))
    os.environ.setdefault("MUJOCO_GL", "egl")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the workers
    worker, startup_error = None, None
    try:
        worker = LiberoWorker(cfg)
    except Exception:
        startup_error = traceback.format_exc()
    try:
        while True:
            seq, name, *args = conn.recv()
            if name == "close":
                break
            if worker is None:
                conn.send((seq, "error", startup_error))
                continue
            try:
                result = getattr(worker, name)(*args)
            except Exception:
                conn.send((seq, "error", traceback.format_exc()))
            else:
                conn.send((seq, "ok", result))
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        if worker is not None:
            worker.close()


def _unlink(shm_name: str) -> None:
    """Free the parent's shared-memory block of this worker (the parent is gone and cannot)."""
    block = SharedMemory(name=shm_name)
    block.close()
    block.unlink()
