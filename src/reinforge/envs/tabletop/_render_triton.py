"""Fused Triton kernel of the tabletop renderer (see render.py for the scene model): the GPU fast path.

One program renders one tile of pixels of one (env, view): it casts the tile's rays, colours the table, floor
or sky, darkens the shadows, then loops over the env's primitives in registers (slab tests, z-buffer, flat
shading, open-container interior) and writes uint8 pixels, so nothing per pixel x primitive ever reaches memory.
A primitive (or shadow) whose screen-space bounding box misses the tile is skipped with one scalar test.

The arithmetic follows ``_render_numba`` step by step: float64 where numba promotes to float64, float32 where it
stays in float32 (e.g. ``lo - o`` of two primitive/camera fields), the same operation order, and no fusion of
mul + add into FMA, so that both kernels give the same pixels. One deliberate difference: a ray that misses a
primitive never writes (numba's miss distance 1e30 beats the float32-rounded 1e30 of a sky pixel inside the
primitive's bounding box and paints it black; the torch backend, like this one, keeps the sky). ``precise=False``
computes in float32 instead (for GPUs with slow float64; a few pixels may then differ).

Importing this module imports triton. With ``TRITON_INTERPRET=1`` set when this module is imported, the kernel
runs on CPU tensors in Triton's (slow) interpreter, which the tests use; it calls none of triton's own jit
functions (``tl.cdiv``, ``tl.zeros_like``), whose mode is fixed when triton is imported.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from reinforge.envs.tabletop.render_constants import (
    CAM_FIELDS,
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
    PRIM_FIELDS,
    SHADOW,
    SKY_RGB,
    TABLE_HALF,
    TABLE_RGB,
)

BIG = tl.constexpr(1e30)
_NF = tl.constexpr(PRIM_FIELDS)
_NC = tl.constexpr(CAM_FIELDS)
_ACTIVE, _SHADOW, _HIDE_WRIST = tl.constexpr(FLAG_ACTIVE), tl.constexpr(FLAG_SHADOW), tl.constexpr(FLAG_HIDE_WRIST)
_HALF_X, _HALF_Y = tl.constexpr(TABLE_HALF[0]), tl.constexpr(TABLE_HALF[1])
_GRID, _GRID_LINE = tl.constexpr(GRID), tl.constexpr(GRID_LINE)
_SHADE_SHADOW, _SHADE_INTERIOR = tl.constexpr(SHADOW), tl.constexpr(INTERIOR)
_TABLE_R, _TABLE_G, _TABLE_B = (tl.constexpr(c) for c in TABLE_RGB)
_FLOOR_R, _FLOOR_G, _FLOOR_B = (tl.constexpr(c) for c in FLOOR_RGB)
_SKY_R, _SKY_G, _SKY_B = (tl.constexpr(c) for c in SKY_RGB)


@triton.jit
def _slab(o, d, lo, hi):
    """Entry and exit distances of the rays o + t d through lo <= x <= hi (o, lo, hi: float32 scalars)."""
    par = tl.abs(d) < 1e-12
    ob = o + tl.full(d.shape, 0.0, d.dtype)  # exact; a block (the interpreter cannot broadcast scalar bools)
    inside = (lo <= ob) & (ob <= hi)
    safe = tl.where(par, 1.0, d)
    ta = (lo - o) / safe
    tb = (hi - o) / safe
    t_in = tl.where(par & inside, -BIG, tl.where(par, BIG, tl.minimum(ta, tb)))
    t_out = tl.where(par & inside, BIG, tl.where(par, -BIG, tl.maximum(ta, tb)))
    return t_in, t_out


@triton.jit
def _hit(q, ox, oy, oz, dx, dy, dz, FP: tl.constexpr):
    """(t, shade, hit) of the rays with the primitive at q, as ``_render_numba._hit``."""
    cyl = tl.load(q) == 1.0
    x0, x1, y0, y1 = tl.load(q + 1), tl.load(q + 2), tl.load(q + 3), tl.load(q + 4)
    tzi, tzo = _slab(oz, dz, tl.load(q + 5), tl.load(q + 6))
    cx = 0.5 * (x0 + x1).to(FP)
    cy = 0.5 * (y0 + y1).to(FP)
    r = 0.5 * (x1 - x0).to(FP)
    if cyl:  # vertical cylinder: the quadratic in the xy-plane, capped by the z slab
        ax = ox - cx
        ay = oy - cy
        a = dx * dx + dy * dy
        bq = 2.0 * (ax * dx + ay * dy)
        cq = ax * ax + ay * ay - r * r
        flat = a < 1e-12
        disc = bq * bq - 4.0 * a * cq
        sq = tl.sqrt(tl.maximum(disc, 0.0))
        a2 = 2.0 * tl.where(flat, 1.0, a)
        c_in = tl.where(flat, -BIG, (-bq - sq) / a2)
        c_out = tl.where(flat, BIG, (-bq + sq) / a2)
        miss = tl.where(flat, cq + tl.full(a.shape, 0.0, FP) > 0, disc < 0)
        t_in = tl.maximum(c_in, tzi)
        t_out = tl.minimum(c_out, tzo)
        face = tl.where(tzi >= c_in, 2, 3)
    else:
        txi, txo = _slab(ox, dx, x0, x1)
        tyi, tyo = _slab(oy, dy, y0, y1)
        txy = tl.maximum(txi, tyi)
        t_in = tl.maximum(txy, tzi)
        t_out = tl.minimum(tl.minimum(txo, tyo), tzo)
        face = tl.where(tzi >= txy, 2, tl.where(tyi >= txi, 1, 0))
        miss = dx != dx  # all False (the directions are finite)
    hit = (t_in <= t_out) & (t_out > 1e-4) & (miss == 0)
    t = tl.maximum(t_in, 0.0)
    hx = ox + t * dx
    hy = oy + t * dy
    zero = tl.full(dx.shape, 0.0, FP)  # keeps the shade constants in FP: two bare Python floats would become float32
    shade = tl.where(dx > 0, zero + 0.62, 0.7)  # face 0: x side
    shade = tl.where(face == 1, tl.where(dy > 0, zero + 0.8, 0.6), shade)
    shade = tl.where(face == 2, tl.where(dz < 0, zero + 1.0, 0.5), shade)
    rr = tl.maximum(r, 1e-6)
    shade = tl.where(face == 3, 0.68 - 0.2 * ((hy - cy) / rr) + 0.08 * ((hx - cx) / rr), shade)
    inset = tl.load(q + 10)
    if inset > 0:  # open container: the top face shows its dark interior inside the walls
        ex = hx - cx
        ey = hy - cy
        if cyl:
            ri = tl.maximum(r - inset, 0.0)
            inner = ex * ex + ey * ey <= ri * ri
        else:
            inner = (tl.abs(ex) <= r - inset) & (tl.abs(ey) <= 0.5 * (y1 - y0).to(FP) - inset)
        shade = tl.where((face == 2) & (dz < 0) & inner, _SHADE_INTERIOR, shade)
    return t, shade, hit


@triton.jit
def _in_shadow(q, px, py, FP: tl.constexpr):
    """Whether the table points (px, py) lie under the footprint of the primitive at q."""
    x0, x1, y0, y1 = tl.load(q + 1), tl.load(q + 2), tl.load(q + 3), tl.load(q + 4)
    rx = px - 0.5 * (x0 + x1).to(FP)
    ry = py - 0.5 * (y0 + y1).to(FP)
    hx = 0.5 * (x1 - x0).to(FP)
    hy = 0.5 * (y1 - y0).to(FP)
    if tl.load(q) == 1.0:
        inside = rx * rx + ry * ry <= hx * hx
    else:
        inside = (tl.abs(rx) <= hx) & (tl.abs(ry) <= hy)
    return inside


@triton.jit
def _render_kernel(prims_ptr, cams_ptr, boxes_ptr, out_ptr, P, H, W, V: tl.constexpr, BH: tl.constexpr,
                   BW: tl.constexpr, FP: tl.constexpr):
    """Pixels of the tile ``program_id(1)`` (BH x BW, row-major tiles) of the view ``program_id(0)`` = env * V +
    view into out (B, V, 3, H, W) uint8; FP is the dtype of the ray arithmetic (float64: numba's pixels)."""
    bv = tl.program_id(0)
    tile = tl.program_id(1)
    v = bv % V
    tiles_w = (W + BW - 1) // BW
    row0 = (tile // tiles_w) * BH
    col0 = (tile % tiles_w) * BW
    lane = tl.arange(0, BH * BW)
    i = row0 + lane // BW
    j = col0 + lane % BW
    cam = cams_ptr + bv * _NC
    ox, oy, oz = tl.load(cam), tl.load(cam + 1), tl.load(cam + 2)
    su = (2.0 * (j.to(FP) + 0.5) / W - 1.0) * tl.load(cam + 12)
    sv = (1.0 - 2.0 * (i.to(FP) + 0.5) / H) * tl.load(cam + 13)
    dx = tl.load(cam + 9) + su * tl.load(cam + 3) + sv * tl.load(cam + 6)
    dy = tl.load(cam + 10) + su * tl.load(cam + 4) + sv * tl.load(cam + 7)
    dz = tl.load(cam + 11) + su * tl.load(cam + 5) + sv * tl.load(cam + 8)
    # table (grid lines: Python's modulo, as numba's, from the exact fmod), floor or sky
    down = dz < -1e-9
    t = -oz / tl.where(down, dz, -1.0)
    px = ox + t * dx
    py = oy + t * dy
    gx = px % _GRID
    gy = py % _GRID
    line = (tl.where(gx < 0, gx + _GRID, gx) < _GRID_LINE) | (tl.where(gy < 0, gy + _GRID, gy) < _GRID_LINE)
    shade = tl.where(line, tl.full(dx.shape, 0.9, FP), 1.0)
    on = (tl.abs(px) <= _HALF_X) & (tl.abs(py) <= _HALF_Y)
    red = tl.where(down, tl.where(on, (shade * _TABLE_R).to(tl.int32), _FLOOR_R), _SKY_R)
    green = tl.where(down, tl.where(on, (shade * _TABLE_G).to(tl.int32), _FLOOR_G), _SKY_G)
    blue = tl.where(down, tl.where(on, (shade * _TABLE_B).to(tl.int32), _FLOOR_B), _SKY_B)
    depth = tl.where(down, t, BIG).to(tl.float32)
    prims = prims_ptr + (bv // V) * P * _NF
    boxes = boxes_ptr + bv * P * 8
    for k in range(P):  # shadows of elevated casters, each darkening the pixel again
        q = prims + k * _NF
        box = boxes + k * 8 + 4  # the footprint's [r0, r1, c0, c1]
        near = ((tl.load(box) < row0 + BH) & (tl.load(box + 1) > row0) & (tl.load(box + 2) < col0 + BW)
                & (tl.load(box + 3) > col0))
        if near & ((tl.load(q + 11).to(tl.int32) & _SHADOW) != 0) & (tl.load(q + 5).to(FP) > 0.003):
            dark = down & _in_shadow(q, px, py, FP)
            red = tl.where(dark, (red.to(FP) * _SHADE_SHADOW).to(tl.int32), red)
            green = tl.where(dark, (green.to(FP) * _SHADE_SHADOW).to(tl.int32), green)
            blue = tl.where(dark, (blue.to(FP) * _SHADE_SHADOW).to(tl.int32), blue)
    for k in range(P):  # primitives, nearest hit wins
        q = prims + k * _NF
        flags = tl.load(q + 11).to(tl.int32)
        box = boxes + k * 8  # the box's [r0, r1, c0, c1]
        near = ((tl.load(box) < row0 + BH) & (tl.load(box + 1) > row0) & (tl.load(box + 2) < col0 + BW)
                & (tl.load(box + 3) > col0))
        if near & ((flags & _ACTIVE) != 0) & ((v != 1) | ((flags & _HIDE_WRIST) == 0)):
            th, shade, hit = _hit(q, ox, oy, oz, dx, dy, dz, FP)
            win = hit & (th < depth.to(FP))
            depth = tl.where(win, th.to(tl.float32), depth)
            red = tl.where(win, (tl.load(q + 7) * shade).to(tl.int32), red)
            green = tl.where(win, (tl.load(q + 8) * shade).to(tl.int32), green)
            blue = tl.where(win, (tl.load(q + 9) * shade).to(tl.int32), blue)
    keep = (i < H) & (j < W)
    out = out_ptr + bv.to(tl.int64) * 3 * H * W + i * W + j
    tl.store(out, red.to(tl.uint8), mask=keep)
    tl.store(out + H * W, green.to(tl.uint8), mask=keep)
    tl.store(out + 2 * H * W, blue.to(tl.uint8), mask=keep)


# the kernel's mode, fixed when this module is imported (triton.jit reads TRITON_INTERPRET then)
interpreted = not isinstance(_render_kernel, triton.runtime.JITFunction)


def screen_boxes(prims: torch.Tensor, cams: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, V, P, 8) int32 pixel ranges [r0, r1, c0, c1] of each primitive's box, then of its footprint on the
    table (z = 0): the projected corners' range, one pixel wider than the numba kernel's (float32 here); the
    whole image where a corner lies behind the camera."""
    xs, ys, zs = prims[..., F_X0:F_X1 + 1], prims[..., F_Y0:F_Y1 + 1], prims[..., F_Z0:F_Z1 + 1]
    box = torch.stack(torch.broadcast_tensors(xs[..., :, None, None], ys[..., None, :, None], zs[..., None, None, :]),
                      -1).flatten(2, 4)  # (B, P, 8, 3)
    foot = torch.cat([box[..., :2], torch.zeros_like(box[..., 2:])], -1)
    pts = torch.stack([box, foot], 2).flatten(1, 3)  # (B, P * 16, 3)
    basis = cams[..., 3:12].unflatten(-1, (3, 3))  # (B, V, 3 [right, up, forward], 3)
    rel = torch.einsum("bnk,bvck->bvnc", pts, basis) - torch.einsum("bvk,bvck->bvc", cams[..., :3], basis)[:, :, None]
    rel = rel.unflatten(2, (prims.shape[1], 2, 8))  # (B, V, P, 2, 8, 3)
    dep = rel[..., 2]
    behind = (dep <= 1e-6).any(-1)
    dep = dep.clamp(min=1e-6)
    col = (rel[..., 0] / dep / cams[:, :, None, None, None, 12] + 1) * 0.5 * W - 0.5
    row = (1 - rel[..., 1] / dep / cams[:, :, None, None, None, 13]) * 0.5 * H - 0.5
    r0 = torch.where(behind, 0, (row.amin(-1).floor() - 1).clamp(0, H))
    r1 = torch.where(behind, H, (row.amax(-1).ceil() + 2).clamp(0, H))
    c0 = torch.where(behind, 0, (col.amin(-1).floor() - 1).clamp(0, W))
    c1 = torch.where(behind, W, (col.amax(-1).ceil() + 2).clamp(0, W))
    return torch.stack([r0, r1, c0, c1], -1).flatten(-2).to(torch.int32).contiguous()


def render(prims: torch.Tensor, cams: torch.Tensor, H: int, W: int, *, precise: bool = True,
           block: tuple[int, int] = (8, 16), num_warps: int = 4) -> torch.Tensor:
    """(B, V, 3, H, W) uint8 images of prims (B, P, PRIM_FIELDS) seen by cams (B, V, CAM_FIELDS), both float32
    on a CUDA device (CPU under ``TRITON_INTERPRET=1``). ``block`` = (rows, cols) of a tile: powers of two."""
    prims, cams = prims.float().contiguous(), cams.float().contiguous()
    B, P = prims.shape[:2]
    V = cams.shape[1]
    out = torch.empty((B, V, 3, H, W), dtype=torch.uint8, device=prims.device)
    if B == 0:
        return out
    boxes = screen_boxes(prims, cams, H, W)
    BH, BW = block
    grid = (B * V, triton.cdiv(H, BH) * triton.cdiv(W, BW))
    on_device = torch.cuda.device(prims.device) if prims.is_cuda else contextlib.nullcontext()
    with on_device:  # triton launches on the current CUDA device
        _render_kernel[grid](prims, cams, boxes, out, P, H, W, V=V, BH=BH, BW=BW,
                             FP=tl.float64 if precise else tl.float32, num_warps=num_warps, enable_fp_fusion=False)
    return out
