"""Compiled numba kernel of the tabletop renderer (see render.py for the scene model).

Mirrors ``render.render_torch`` pixel for pixel up to float rounding, but only visits the pixels inside
each primitive's projected bounding box and can start from a cached background image.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from reinforge.envs.tabletop.render_constants import (
    FLAG_ACTIVE,
    FLAG_HIDE_WRIST,
    FLAG_SHADOW,
    FLOOR_RGB,
    GRID,
    GRID_LINE,
    INTERIOR,
    SHADOW,
    SKY_RGB,
    TABLE_HALF,
    TABLE_RGB,
)

BIG = 1e30


@njit(cache=True, inline="always")
def _slab(o, d, lo, hi):
    if abs(d) < 1e-12:
        if lo <= o <= hi:
            return -BIG, BIG
        return BIG, -BIG
    ta = (lo - o) / d
    tb = (hi - o) / d
    if ta < tb:
        return ta, tb
    return tb, ta


@njit(cache=True)
def _hit(q, ox, oy, oz, dx, dy, dz):
    """(t, shade) of the nearest hit of a ray with primitive q; t = BIG for a miss."""
    x0, x1, y0, y1, z0, z1 = q[1], q[2], q[3], q[4], q[5], q[6]
    tzi, tzo = _slab(oz, dz, z0, z1)
    cx = 0.5 * (x0 + x1)
    cy = 0.5 * (y0 + y1)
    r = 0.5 * (x1 - x0)
    if q[0] == 1.0:  # vertical cylinder
        ax = ox - cx
        ay = oy - cy
        a = dx * dx + dy * dy
        bq = 2.0 * (ax * dx + ay * dy)
        cq = ax * ax + ay * ay - r * r
        if a < 1e-12:
            if cq > 0:
                return BIG, 0.0
            c_in, c_out = -BIG, BIG
        else:
            disc = bq * bq - 4.0 * a * cq
            if disc < 0:
                return BIG, 0.0
            sq = math.sqrt(disc)
            c_in = (-bq - sq) / (2.0 * a)
            c_out = (-bq + sq) / (2.0 * a)
        t_in = max(c_in, tzi)
        t_out = min(c_out, tzo)
        face = 2 if tzi >= c_in else 3
    else:
        txi, txo = _slab(ox, dx, x0, x1)
        tyi, tyo = _slab(oy, dy, y0, y1)
        t_in = max(max(txi, tyi), tzi)
        t_out = min(min(txo, tyo), tzo)
        if tzi >= max(txi, tyi):
            face = 2
        elif tyi >= txi:
            face = 1
        else:
            face = 0
    if not (t_in <= t_out and t_out > 1e-4):
        return BIG, 0.0
    t = max(t_in, 0.0)
    hx = ox + t * dx
    hy = oy + t * dy
    if face == 0:
        shade = 0.62 if dx > 0 else 0.7
    elif face == 1:
        shade = 0.8 if dy > 0 else 0.6
    elif face == 2:
        shade = 1.0 if dz < 0 else 0.5
    else:
        rr = max(r, 1e-6)
        shade = 0.68 - 0.2 * ((hy - cy) / rr) + 0.08 * ((hx - cx) / rr)
    inset = q[10]
    if face == 2 and dz < 0 and inset > 0:
        if q[0] == 1.0:
            ri = max(r - inset, 0.0)
            inner = (hx - cx) ** 2 + (hy - cy) ** 2 <= ri * ri
        else:
            inner = abs(hx - cx) <= 0.5 * (x1 - x0) - inset and abs(hy - cy) <= 0.5 * (y1 - y0) - inset
        if inner:
            shade = INTERIOR
    return t, shade


@njit(cache=True, inline="always")
def _project(cam, px, py, pz, W, H):
    rx, ry, rz = px - cam[0], py - cam[1], pz - cam[2]
    dep = rx * cam[9] + ry * cam[10] + rz * cam[11]
    if dep <= 1e-6:
        return False, 0.0, 0.0
    su = (rx * cam[3] + ry * cam[4] + rz * cam[5]) / dep
    sv = (rx * cam[6] + ry * cam[7] + rz * cam[8]) / dep
    col = (su / cam[12] + 1.0) * 0.5 * W - 0.5
    row = (1.0 - sv / cam[13]) * 0.5 * H - 0.5
    return True, row, col


@njit(cache=True)
def _bbox(cam, x0, x1, y0, y1, z0, z1, W, H):
    """Pixel row/col range [r0, r1) x [c0, c1) covering a box's projection."""
    rmin, rmax, cmin, cmax = 1e9, -1e9, 1e9, -1e9
    for xi in range(2):
        for yi in range(2):
            for zi in range(2):
                ok, row, col = _project(cam, x1 if xi else x0, y1 if yi else y0, z1 if zi else z0, W, H)
                if not ok:
                    return 0, H, 0, W
                rmin, rmax = min(rmin, row), max(rmax, row)
                cmin, cmax = min(cmin, col), max(cmax, col)
    r0 = max(0, int(math.floor(rmin)))
    r1 = min(H, int(math.ceil(rmax)) + 1)
    c0 = max(0, int(math.floor(cmin)))
    c1 = min(W, int(math.ceil(cmax)) + 1)
    return r0, r1, c0, c1


@njit(cache=True, inline="always")
def _ray(cam, i, j, H, W):
    su = (2.0 * (j + 0.5) / W - 1.0) * cam[12]
    sv = (1.0 - 2.0 * (i + 0.5) / H) * cam[13]
    dx = cam[9] + su * cam[3] + sv * cam[6]
    dy = cam[10] + su * cam[4] + sv * cam[7]
    dz = cam[11] + su * cam[5] + sv * cam[8]
    return dx, dy, dz


@njit(cache=True)
def _table(img, depth, cam, H, W):
    for i in range(H):
        for j in range(W):
            dx, dy, dz = _ray(cam, i, j, H, W)
            if dz < -1e-9:
                t = -cam[2] / dz
                px = cam[0] + t * dx
                py = cam[1] + t * dy
                if abs(px) <= TABLE_HALF[0] and abs(py) <= TABLE_HALF[1]:
                    shade = 1.0
                    if (px % GRID) < GRID_LINE or (py % GRID) < GRID_LINE:
                        shade = 0.9
                    for c in range(3):
                        img[c, i, j] = np.uint8(TABLE_RGB[c] * shade)
                else:
                    for c in range(3):
                        img[c, i, j] = np.uint8(FLOOR_RGB[c])
                depth[i, j] = t
            else:
                for c in range(3):
                    img[c, i, j] = np.uint8(SKY_RGB[c])
                depth[i, j] = BIG


@njit(cache=True)
def _shadows(img, cam, prims, H, W):
    for k in range(prims.shape[0]):
        q = prims[k]
        flags = int(q[11])
        if (flags & FLAG_SHADOW) == 0 or q[5] <= 0.003:
            continue
        r0, r1, c0, c1 = _bbox(cam, q[1], q[2], q[3], q[4], 0.0, 0.0, W, H)
        cx, cy = 0.5 * (q[1] + q[2]), 0.5 * (q[3] + q[4])
        hx, hy = 0.5 * (q[2] - q[1]), 0.5 * (q[4] - q[3])
        for i in range(r0, r1):
            for j in range(c0, c1):
                dx, dy, dz = _ray(cam, i, j, H, W)
                if dz >= -1e-9:
                    continue
                t = -cam[2] / dz
                rx = cam[0] + t * dx - cx
                ry = cam[1] + t * dy - cy
                inside = rx * rx + ry * ry <= hx * hx if q[0] == 1.0 else abs(rx) <= hx and abs(ry) <= hy
                if inside:
                    for c in range(3):
                        img[c, i, j] = np.uint8(img[c, i, j] * SHADOW)


@njit(cache=True, parallel=True)
def render(prims, cams, bg, bg_depth, cached, out, depth_sink, bake):
    """Render out (B, V, 3, H, W) uint8 from prims (B, P, 12) and cams (B, V, 14)."""
    B, V = cams.shape[0], cams.shape[1]
    H, W = out.shape[3], out.shape[4]
    P = prims.shape[1]
    for job in prange(B * V):
        b = job // V
        v = job % V
        cam = cams[b, v]
        img = out[b, v]
        depth = np.empty((H, W), np.float32)
        if cached[v]:
            img[:] = bg[v]
            depth[:] = bg_depth[v]
        else:
            _table(img, depth, cam, H, W)
        if bake:
            depth_sink[v] = depth
            continue
        _shadows(img, cam, prims[b], H, W)
        for k in range(P):
            q = prims[b, k]
            flags = int(q[11])
            if (flags & FLAG_ACTIVE) == 0 or (v == 1 and (flags & FLAG_HIDE_WRIST) != 0):
                continue
            r0, r1, c0, c1 = _bbox(cam, q[1], q[2], q[3], q[4], q[5], q[6], W, H)
            for i in range(r0, r1):
                for j in range(c0, c1):
                    dx, dy, dz = _ray(cam, i, j, H, W)
                    t, shade = _hit(q, cam[0], cam[1], cam[2], dx, dy, dz)
                    if t < depth[i, j]:
                        depth[i, j] = t
                        img[0, i, j] = np.uint8(q[7] * shade)
                        img[1, i, j] = np.uint8(q[8] * shade)
                        img[2, i, j] = np.uint8(q[9] * shade)
