"""One MetaWorld task env with its camera renderer (``TaskSim``), and the pool that gives env slots theirs.

MetaWorld builds one MuJoCo model per task name, so an env slot that switches task needs another env object;
building one takes ~0.2 s and its renderer ~0.5 s (~80 MB together). ``SimPool`` keeps the sims that slots let
go of (at most ``max_idle``, least recently used dropped first) so switching back to a task is free.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS

RenderQuality = Literal["default", "fast"]
NO_TIME_LIMIT = 2**62  # the adapter truncates episodes itself; MetaWorld's own limit (500) would raise


def _check_gl_platform() -> None:
    """Refuse to render through GLFW without a display (MuJoCo would fail with an obscure fatal error)."""
    context = getattr(mujoco.gl_context, "GLContext", None)
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if context is None or (headless and context.__module__.startswith("mujoco.glfw")):
        raise RuntimeError("MuJoCo cannot render here: it chose GLFW when it was imported and there is no display. "
                           "Set MUJOCO_GL=egl (or osmesa) in the environment, or import reinforge.envs before "
                           "mujoco / metaworld")


class TaskSim:
    """A MetaWorld env of one task name plus a renderer of its cameras (made on the first ``render``).

    Images come out upright: a camera whose image "up" points below the horizon (MetaWorld's ``corner`` is
    mounted upside down) is turned by 180 degrees, which keeps the picture a true camera view (no mirroring).
    """

    def __init__(self, task: str, *, image_size: tuple[int, int], cameras: tuple[str, ...],
                 quality: RenderQuality = "fast"):
        self.task = task
        self.env = ALL_V3_ENVIRONMENTS[task]()
        self.env.max_path_length = NO_TIME_LIMIT
        model = self.env.model
        self.camera_ids = []
        for name in cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                known = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
                self.env.close()
                raise ValueError(f"unknown MetaWorld camera {name!r}; cameras: {known}")
            self.camera_ids.append(cid)
        self.image_size = image_size
        self.quality = quality
        self._renderer: mujoco.Renderer | None = None
        self._flip: list[bool] = []

    @property
    def control_hz(self) -> float:
        return 1.0 / (self.env.model.opt.timestep * self.env.frame_skip)

    def reset(self, state) -> np.ndarray:
        """Reset to a fixed variation (a MetaWorld ``Task``); returns the 39-dim observation."""
        self.env.set_task(state)
        obs, _ = self.env.reset()
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """One control step; returns the 39-dim observation and whether the task's success holds."""
        obs, _, _, _, info = self.env.step(action)
        return obs, bool(info["success"])

    def render(self) -> np.ndarray:
        """(V, 3, H, W) uint8 upright images of the current state."""
        if self._renderer is None:
            self._make_renderer()
        h, w = self.image_size
        out = np.empty((len(self.camera_ids), h, w, 3), dtype=np.uint8)
        for v, (cid, flip) in enumerate(zip(self.camera_ids, self._flip)):
            self._renderer.update_scene(self.env.data, camera=cid)
            self._renderer.render(out=out[v])
            if flip:
                out[v] = out[v, ::-1, ::-1].copy()
        return out.transpose(0, 3, 1, 2)

    def _make_renderer(self) -> None:
        _check_gl_platform()
        model, data = self.env.model, self.env.data
        h, w = self.image_size
        if self.quality == "fast":  # read when the renderer's GL context is made
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        model.vis.global_.offheight = max(model.vis.global_.offheight, h)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, w)
        self._renderer = mujoco.Renderer(model, h, w)
        _close_at_exit()
        # z component of each camera's "up" axis (column 1 of its world rotation)
        self._flip = [bool(data.cam_xmat[cid].reshape(3, 3)[2, 1] < 0) for cid in self.camera_ids]

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()


class SimPool:
    """The sim of each env slot, and the idle sims kept for later (least recently used dropped first)."""

    def __init__(self, num_slots: int, make: Callable[[str], TaskSim], max_idle: int):
        self.slots: list[TaskSim | None] = [None] * num_slots
        self.idle: OrderedDict[int, TaskSim] = OrderedDict()
        self.make, self.max_idle = make, max_idle
        self.closed = False
        _LIVE_POOLS.add(self)

    def __getitem__(self, slot: int) -> TaskSim:
        sim = self.slots[slot]
        if sim is None:
            raise RuntimeError("call reset() before stepping or rendering the env")
        return sim

    def assign(self, tasks: dict[int, str]) -> None:
        """Give each slot in ``tasks`` a sim of its task: its own if it runs that task already, else one let go
        of by another slot (all slots that change task let go first), an idle one or a new one."""
        if self.closed:
            raise RuntimeError("the env is closed")
        for slot, task in tasks.items():
            cur = self.slots[slot]
            if cur is not None and cur.task != task:
                self.release(cur)
                self.slots[slot] = None
        for slot, task in tasks.items():
            if self.slots[slot] is None:
                key = next((k for k, s in self.idle.items() if s.task == task), None)
                self.slots[slot] = self.idle.pop(key) if key is not None else self.make(task)
        self._trim()

    def release(self, sim: TaskSim) -> None:
        """Keep ``sim`` idle for later use."""
        self.idle[id(sim)] = sim
        self.idle.move_to_end(id(sim))

    def _trim(self) -> None:
        while len(self.idle) > self.max_idle:
            _, sim = self.idle.popitem(last=False)
            sim.close()

    def close(self) -> None:
        """Close every sim (EGL complains at interpreter exit about renderers left open)."""
        self.closed = True
        for sim in [*self.slots, *self.idle.values()]:
            if sim is not None:
                sim.close()
        self.slots = [None] * len(self.slots)
        self.idle.clear()


_LIVE_POOLS: weakref.WeakSet[SimPool] = weakref.WeakSet()


def _close_live_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


@functools.cache
def _close_at_exit() -> None:
    """Close the live pools at exit before MuJoCo terminates EGL (it registers that when it makes its first GL
    context; exit hooks run last-registered first), so call this after making a renderer."""
    atexit.register(_close_live_pools)
