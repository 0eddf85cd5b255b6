"""Rendering of the tabletop world: ray-cast boxes and vertical cylinders from two pinhole cameras.

Scenes are flattened into *primitives* (B, P, PRIM_FIELDS): objects, drawer handles and the gripper
(arm, palm, two fingers). Each camera pixel casts a ray; the nearest primitive hit wins (z-buffer);
faces are flat-shaded by orientation, open containers show a dark interior, and elevated objects cast
a shadow on the table, so that positions, heights, identities (colour and shape) and the grasp state are
all visible.

Three backends compute the same images:

- ``numba``: a compiled kernel, parallel over (env, view), that only visits the pixels inside each
  primitive's projected bounding box and copies a cached background for the fixed camera. The fast path
  on CPU.
- ``triton``: a fused GPU kernel (``_render_triton.py``), one program per tile of pixels that loops over the
  primitives in registers, with numba's arithmetic (the same pixels). The fast path on CUDA; needs triton.
- ``torch``: dense tensor code (every pixel against every primitive). Runs on any device (CUDA too).

View 0 is the fixed third-person "agentview" camera, view 1 the wrist camera that moves with the gripper.
"""

from __future__ import annotations

import importlib
import logging
import math
from types import ModuleType
from typing import Literal

import numpy as np
import torch

from reinforge.envs.tabletop.catalog import BOX, CYLINDER
from reinforge.envs.tabletop.render_constants import (  # noqa: F401 - re-exported
    AGENT_EYE,
    AGENT_TAN,
    AGENT_TARGET,
    CAM_FIELDS,
    F_B,
    F_FLAGS,
    F_G,
    F_INSET,
    F_R,
    F_SHAPE,
    F_X0,
    F_X1,
    F_Y0,
    F_Y1,
    F_Z0,
    F_Z1,
    FLAG_ACTIVE,
    FLAG_HIDE_WRIST,
    FLAG_SHADOW,
    FLOOR_RGB,
    GRID,
    GRID_LINE,
    INTERIOR,
    NUM_VIEWS,
    PRIM_FIELDS,
    SHADOW,
    SKY_RGB,
    TABLE_HALF,
    TABLE_RGB,
    VIEW_NAMES,
    WRIST_OFFSET,
    WRIST_PITCH,
    WRIST_TAN,
)
from reinforge.envs.tabletop.world import FINGER_LEN, HANDLE_OUT, Scene, WorldState

log = logging.getLogger(__name__)


Backend = Literal["auto", "numba", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "numba", "torch", "triton")


# ---------------------------------------------------------------- primitives and cameras

def _box(x, y, hx, hy, z0, z1) -> list[torch.Tensor]:
    return [x - hx, x + hx, y - hy, y + hy, z0, z1]


def build_primitives(scene: Scene, state: WorldState) -> torch.Tensor:
    """(B, 2N + 4, PRIM_FIELDS) float32: objects, drawer handles, then the gripper parts."""
    B, N = scene.category.shape
    dev = state.pos.device
    f32 = torch.float32
    x, y, z = state.pos.unbind(-1)
    hx, hy = scene.half.unbind(-1)
    rgb = scene.rgb.to(f32)
    z1 = z + scene.height
    flags = scene.active.to(f32) * (FLAG_ACTIVE + FLAG_SHADOW)
    inset = torch.where(scene.floor > 0, scene.wall, torch.zeros_like(scene.wall))
    objects = torch.stack([scene.shape.to(f32), *_box(x, y, hx, hy, z, z1), *rgb.unbind(-1), inset, flags], -1)

    hz = z + 0.5 * scene.height
    hyf = y - hy
    handle_rgb = torch.full_like(x, 90.0)
    handles = torch.stack([
        torch.full_like(x, BOX), *_box(x, hyf - 0.5 * HANDLE_OUT, torch.full_like(x, 0.03),
                                       torch.full_like(x, 0.5 * HANDLE_OUT + 0.002), hz - 0.008, hz + 0.008),
        handle_rgb, handle_rgb, handle_rgb + 5, torch.zeros_like(x), scene.drawer.to(f32) * FLAG_ACTIVE], -1)

    gx, gy, gz = state.grip_pos.unbind(-1)
    c, s = torch.cos(state.grip_yaw), torch.sin(state.grip_yaw)
    w = 0.006 + 0.034 * state.grip_open
    one = torch.ones_like(gx)

    def part(px, py, hx_, hy_, z0, z1, shade, flags_):
        return torch.stack([torch.zeros_like(gx), *_box(px, py, hx_, hy_, z0, z1), shade * one, shade * one,
                            (shade + 6) * one, torch.zeros_like(gx), flags_ * one], -1)

    palm_hx = 0.05 * c.abs() + 0.014 * s.abs()
    palm_hy = 0.05 * s.abs() + 0.014 * c.abs()
    grip = torch.stack([
        part(gx, gy, 0.011 * one, 0.011 * one, gz + FINGER_LEN + 0.02, gz + 0.7, 165.0,
             FLAG_ACTIVE + FLAG_HIDE_WRIST),
        part(gx, gy, palm_hx, palm_hy, gz + FINGER_LEN, gz + FINGER_LEN + 0.02, 75.0,
             FLAG_ACTIVE + FLAG_SHADOW + FLAG_HIDE_WRIST),
        part(gx + w * c, gy + w * s, 0.006 * one, 0.006 * one, gz - 0.004, gz + FINGER_LEN, 112.0,
             FLAG_ACTIVE + FLAG_SHADOW),
        part(gx - w * c, gy - w * s, 0.006 * one, 0.006 * one, gz - 0.004, gz + FINGER_LEN, 112.0,
             FLAG_ACTIVE + FLAG_SHADOW),
    ], 1)
    return torch.cat([objects, handles, grip], 1).to(dev)


def _look_at(eye, target) -> np.ndarray:
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    return np.stack([eye, r, u, f])


def build_cameras(state: WorldState, aspect: float = 1.0, *, eye_offset=(0.0, 0.0, 0.0),
                  target_offset=(0.0, 0.0, 0.0), wrist_pitch_offset: float = 0.0) -> torch.Tensor:
    """(B, 2, CAM_FIELDS) float32 cameras: the fixed agentview and the wrist camera on the gripper (the
    offsets move the agentview camera and tilt the wrist camera, for domain shifts)."""
    B = state.grip_pos.shape[0]
    dev = state.grip_pos.device
    eye = np.add(AGENT_EYE, eye_offset)
    look = np.add(AGENT_TARGET, target_offset)
    agent = torch.tensor(np.concatenate([_look_at(eye, look).ravel(),
                                         [AGENT_TAN * aspect, AGENT_TAN]]), dtype=torch.float32, device=dev)
    c, s = torch.cos(state.grip_yaw), torch.sin(state.grip_yaw)
    one = torch.ones_like(c)

    def rot(v):  # rotate gripper-frame vectors (x, y, z) by yaw about z
        return torch.stack([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2] * one], -1)

    eye = state.grip_pos + rot(WRIST_OFFSET)
    cp, sp = math.cos(WRIST_PITCH + wrist_pitch_offset), math.sin(WRIST_PITCH + wrist_pitch_offset)
    fwd = rot((0.0, sp, -cp))
    right = rot((1.0, 0.0, 0.0))
    up = rot((0.0, cp, sp))
    wrist = torch.cat([eye, right, up, fwd, WRIST_TAN * aspect * one[:, None], WRIST_TAN * one[:, None]], -1)
    return torch.stack([agent.expand(B, -1), wrist], 1).contiguous()


# ---------------------------------------------------------------- numba backend

_NUMBA_KERNEL = None


def _numba_kernel():
    """Compile (once, cached on disk) the numba renderer; None when numba is not installed."""
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is not None:
        return _NUMBA_KERNEL
    try:
        from reinforge.envs.tabletop import _render_numba
    except ImportError:  # pragma: no cover - numba is a core dependency
        log.warning("numba is not installed; rendering falls back to the slower torch backend")
        return None
    _NUMBA_KERNEL = _render_numba.render
    return _NUMBA_KERNEL


_TRITON_MODULE = "reinforge.envs.tabletop._render_triton"


def _triton_module() -> ModuleType:
    """The triton backend (imports triton on first use). Looked up in sys.modules on every call, not cached
    here, so that tests can swap in a copy imported under ``TRITON_INTERPRET=1``."""
    try:
        return importlib.import_module(_TRITON_MODULE)
    except ImportError as e:
        raise ImportError(f"render backend 'triton' needs triton ({e}); pip install triton (CUDA builds of torch "
                          "ship it), or use render_backend='torch'") from e


_TRITON_OK: bool | None = None


def _triton_importable() -> bool:
    """Whether the triton backend imports (checked once; 'auto' on CUDA falls back to torch when not)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            _triton_module()
            _TRITON_OK = True
        except ImportError as e:
            log.warning("%s; rendering on CUDA falls back to the slower torch backend", e)
            _TRITON_OK = False
    return _TRITON_OK


class Renderer:
    """Renders (B, V, 3, H, W) uint8 images of the tabletop world with the chosen backend."""

    def __init__(self, height: int = 64, width: int = 64, backend: Backend = "auto", *,
                 camera_offsets: dict | None = None):
        if height < 8 or width < 8:
            raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown render backend {backend!r}; use one of {list(BACKENDS)}")
        self.height, self.width, self.backend = height, width, backend
        self.camera_offsets = dict(camera_offsets or {})  # keyword arguments of build_cameras
        self._background: tuple[np.ndarray, np.ndarray] | None = None

    def _select(self, device: torch.device) -> Literal["numba", "torch", "triton"]:
        """The backend that renders tensors on ``device``: 'auto' is numba on CPU, triton on CUDA (torch where
        either is missing, and on other devices)."""
        if self.backend == "auto":
            if device.type == "cpu":
                return "numba" if _numba_kernel() is not None else "torch"
            return "triton" if device.type == "cuda" and _triton_importable() else "torch"
        if self.backend == "numba":
            if device.type != "cpu":
                raise ValueError("the numba render backend needs CPU tensors; use backend='torch' or 'triton' on "
                                 f"{device.type}")
            if _numba_kernel() is None:
                raise ImportError("render backend 'numba' needs numba: pip install numba")
        if self.backend == "triton" and device.type != "cuda" and not _triton_module().interpreted:
            raise ValueError(f"the triton render backend needs CUDA tensors, got {device.type} (on CPU: "
                             "backend='numba'; TRITON_INTERPRET=1 runs it in Triton's slow interpreter)")
        return self.backend

    def render(self, scene: Scene, state: WorldState) -> torch.Tensor:
        prims = build_primitives(scene, state)
        cams = build_cameras(state, self.width / self.height, **self.camera_offsets)
        backend = self._select(prims.device)
        if backend == "numba":
            return self._render_numba(prims, cams)
        if backend == "triton":
            return _triton_module().render(prims, cams, self.height, self.width)
        return render_torch(prims, cams, self.height, self.width)

    def _render_numba(self, prims: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        kernel = _numba_kernel()
        B = prims.shape[0]
        if self._background is None:  # the agentview camera never moves: render its background once
            cam0 = cams[:1].numpy().copy()
            empty = np.zeros((1, 0, PRIM_FIELDS), np.float32)
            img = np.zeros((1, NUM_VIEWS, 3, self.height, self.width), np.uint8)
            depth = np.zeros((NUM_VIEWS, self.height, self.width), np.float32)
            bg = np.zeros((NUM_VIEWS, 3, self.height, self.width), np.uint8)
            cached = np.zeros(NUM_VIEWS, np.bool_)
            kernel(empty, cam0, bg, depth, cached, img, depth, np.bool_(True))
            bg[0] = img[0, 0]
            cached[0] = True
            self._background = (bg, depth, cached)
        bg, depth, cached = self._background
        out = np.empty((B, NUM_VIEWS, 3, self.height, self.width), np.uint8)
        kernel(prims.numpy(), cams.numpy(), bg, depth, cached, out, depth, np.bool_(False))
        return torch.from_numpy(out)


# ---------------------------------------------------------------- torch backend

def _pixel_rays(cams: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins (B, V, 1, 3) and directions (B, V, H*W, 3) for every pixel."""
    dev = cams.device
    su = (2 * (torch.arange(W, device=dev, dtype=torch.float32) + 0.5) / W - 1)
    sv = (1 - 2 * (torch.arange(H, device=dev, dtype=torch.float32) + 0.5) / H)
    o, r, u, f = cams[..., 0:3], cams[..., 3:6], cams[..., 6:9], cams[..., 9:12]
    tu, tv = cams[..., 12:13], cams[..., 13:14]
    su = (su[None, None, :] * tu)[..., None, :, None]  # (B, V, 1, W, 1)
    sv = (sv[None, None, :] * tv)[..., :, None, None]  # (B, V, H, 1, 1)
    d = f[:, :, None, None, :] + su * r[:, :, None, None, :] + sv * u[:, :, None, None, :]
    return o[:, :, None, :], d.reshape(cams.shape[0], cams.shape[1], H * W, 3)


def _table_colour(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """(..., 3) float colour of the table / floor at table-plane points."""
    on_table = (px.abs() <= TABLE_HALF[0]) & (py.abs() <= TABLE_HALF[1])
    gx = torch.remainder(px, GRID) < GRID_LINE
    gy = torch.remainder(py, GRID) < GRID_LINE
    shade = torch.where(gx | gy, 0.9, 1.0)
    table = torch.tensor(TABLE_RGB, dtype=torch.float32, device=px.device)
    floor = torch.tensor(FLOOR_RGB, dtype=torch.float32, device=px.device)
    return torch.where(on_table[..., None], table * shade[..., None], floor)


def render_torch(prims: torch.Tensor, cams: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Dense reference renderer: (B, V, 3, H, W) uint8. Same maths as the numba kernel."""
    B, V = cams.shape[:2]
    o, d = _pixel_rays(cams, H, W)
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    big = torch.tensor(1e30, device=d.device)
    # table plane z = 0
    t_table = torch.where(dz < -1e-9, -oz / torch.where(dz < -1e-9, dz, -torch.ones_like(dz)), big)
    px, py = ox + t_table * dx, oy + t_table * dy
    colour = _table_colour(px, py)
    colour = torch.where((t_table < big)[..., None], colour,
                         torch.tensor(SKY_RGB, dtype=torch.float32, device=d.device))
    depth = t_table.clone()
    view_idx = torch.arange(V, device=d.device)[None, :, None]
    p = prims[:, None, :, :].expand(B, V, -1, -1)  # (B, V, P, F)
    # shadows of elevated primitives on the table
    for k in range(prims.shape[1]):
        q = p[:, :, k, :]
        flags = q[..., F_FLAGS].long()
        caster = ((flags & FLAG_SHADOW) > 0) & (q[..., F_Z0] > 0.003)
        cx, cy = 0.5 * (q[..., F_X0] + q[..., F_X1]), 0.5 * (q[..., F_Y0] + q[..., F_Y1])
        hx, hy = 0.5 * (q[..., F_X1] - q[..., F_X0]), 0.5 * (q[..., F_Y1] - q[..., F_Y0])
        rx, ry = px - cx[..., None], py - cy[..., None]
        cyl = q[..., F_SHAPE][..., None] == CYLINDER
        inside = torch.where(cyl, rx * rx + ry * ry <= (hx * hx)[..., None],
                             (rx.abs() <= hx[..., None]) & (ry.abs() <= hy[..., None]))
        shade = caster[..., None] & inside & (t_table < big)
        colour = torch.where(shade[..., None], colour * SHADOW, colour)
    for k in range(prims.shape[1]):
        q = p[:, :, k, :]
        t, c = _hit_torch(q, ox, oy, oz, dx, dy, dz, view_idx)
        closer = t < depth
        depth = torch.where(closer, t, depth)
        colour = torch.where(closer[..., None], c, colour)
    img = colour.clamp(0, 255).to(torch.uint8)  # truncation, as the kernel does
    return img.reshape(B, V, H, W, 3).permute(0, 1, 4, 2, 3).contiguous()


def _hit_torch(q, ox, oy, oz, dx, dy, dz, view_idx):
    """Nearest hit distance (B, V, R) (1e30 for a miss) and shaded colour (B, V, R, 3) of one primitive."""
    big = 1e30
    flags = q[..., F_FLAGS].long()
    visible = ((flags & FLAG_ACTIVE) > 0) & ~(((flags & FLAG_HIDE_WRIST) > 0) & (view_idx[..., 0] == 1))
    x0, x1, y0, y1, z0, z1 = (q[..., i][..., None] for i in (F_X0, F_X1, F_Y0, F_Y1, F_Z0, F_Z1))
    cyl = (q[..., F_SHAPE] == CYLINDER)[..., None]

    def slab(o_, d_, lo, hi):
        safe = torch.where(d_.abs() < 1e-12, torch.full_like(d_, 1e-12), d_)
        ta, tb = (lo - o_) / safe, (hi - o_) / safe
        t_in, t_out = torch.minimum(ta, tb), torch.maximum(ta, tb)
        par = d_.abs() < 1e-12
        inside = (o_ >= lo) & (o_ <= hi)
        t_in = torch.where(par, torch.where(inside, -big, big), t_in)
        t_out = torch.where(par, torch.where(inside, big, -big), t_out)
        return t_in, t_out

    tzi, tzo = slab(oz, dz, z0, z1)
    # box
    txi, txo = slab(ox, dx, x0, x1)
    tyi, tyo = slab(oy, dy, y0, y1)
    b_in = torch.maximum(torch.maximum(txi, tyi), tzi)
    b_out = torch.minimum(torch.minimum(txo, tyo), tzo)
    b_face = torch.where(tzi >= torch.maximum(txi, tyi), 2, torch.where(tyi >= txi, 1, 0))
    # cylinder
    cx, cy, r = 0.5 * (x0 + x1), 0.5 * (y0 + y1), 0.5 * (x1 - x0)
    ax, ay = ox - cx, oy - cy
    a = dx * dx + dy * dy
    bq = 2 * (ax * dx + ay * dy)
    cq = ax * ax + ay * ay - r * r
    disc = bq * bq - 4 * a * cq
    sq = torch.sqrt(disc.clamp(min=0))
    a_safe = torch.where(a < 1e-12, torch.ones_like(a), a)
    c_in = torch.where(a < 1e-12, torch.where(cq <= 0, -big, big), (-bq - sq) / (2 * a_safe))
    c_out = torch.where(a < 1e-12, torch.where(cq <= 0, big, -big), (-bq + sq) / (2 * a_safe))
    c_in = torch.where((disc < 0) & (a >= 1e-12), torch.full_like(c_in, big), c_in)
    c_out = torch.where((disc < 0) & (a >= 1e-12), torch.full_like(c_out, -big), c_out)
    cyl_in, cyl_out = torch.maximum(c_in, tzi), torch.minimum(c_out, tzo)
    c_face = torch.where(tzi >= c_in, 2, 3)
    t_in = torch.where(cyl, cyl_in, b_in)
    t_out = torch.where(cyl, cyl_out, b_out)
    face = torch.where(cyl, c_face, b_face)
    hit = (t_in <= t_out) & (t_out > 1e-4) & visible[..., None]
    t = torch.where(hit, t_in.clamp(min=0.0), torch.full_like(t_in, big))
    hx_, hy_, hz_ = ox + t * dx, oy + t * dy, oz + t * dz
    # shading by face: 0 = x side, 1 = y side, 2 = top/bottom cap, 3 = cylinder side
    nx = (hx_ - cx) / r.clamp(min=1e-6)
    ny = (hy_ - cy) / r.clamp(min=1e-6)
    side_x = torch.where(dx > 0, 0.62, 0.7)
    shade = torch.where(face == 0, side_x, torch.where(face == 1, torch.where(dy > 0, 0.8, 0.6), 1.0))
    shade = torch.where(face == 3, 0.68 - 0.2 * ny + 0.08 * nx, shade)
    top = (face == 2) & (dz < 0)
    shade = torch.where((face == 2) & (dz >= 0), 0.5, shade)
    inset = q[..., F_INSET][..., None]
    inner_box = ((hx_ - cx).abs() <= 0.5 * (x1 - x0) - inset) & ((hy_ - cy).abs() <= 0.5 * (y1 - y0) - inset)
    inner_cyl = (hx_ - cx) ** 2 + (hy_ - cy) ** 2 <= (r - inset).clamp(min=0) ** 2
    interior = top & (inset > 0) & torch.where(cyl, inner_cyl, inner_box)
    shade = torch.where(interior, INTERIOR, shade)
    del hz_
    rgb = torch.stack([q[..., F_R], q[..., F_G], q[..., F_B]], -1)[..., None, :]
    return t, rgb * shade[..., None]
