"""Monitor folders on disk: ``monitor.json`` (kind, version, sizes, calibration facts) and ``monitor.safetensors``
(the tensors), written atomically (``reinforge.fsutil.atomic_dir``) and read back with checks that name what is
wrong and what to do. Nothing is unpickled: safetensors and JSON only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reinforge.fsutil import UnsafeWriteError, atomic_dir, read_manifest, settle, write_guard

META_NAME = "monitor.json"
TENSORS_NAME = "monitor.safetensors"
FORMAT_VERSION = 1
REFIT = "fit it again with `reinforge monitor fit`"


def write_monitor(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a monitor folder of ``kind`` at ``path``, replacing only a monitor folder of the same kind.
    Non-finite tensors are never written (``FloatingPointError``)."""
    dest = settle(path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and read_manifest(dest) is None:
        raise UnsafeWriteError(f"refusing to replace {dest}: it is not a reinforge monitor folder; choose another "
                               "--out")
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"the {kind} holds NaN or inf ({', '.join(bad)}); not saving it")
    with atomic_dir(dest, kind, "with --out") as tmp:
        body = {"reinforge_monitor": kind, "version": FORMAT_VERSION, **meta}
        (tmp / META_NAME).write_text(json.dumps(body, indent=2))
        with write_guard(tmp / TENSORS_NAME):
            save_file(state, str(tmp / TENSORS_NAME))
    return dest


def _read_meta(folder: Path, kind: str) -> dict[str, Any]:
    f = folder / META_NAME
    if not f.is_file():
        raise ValueError(f"{folder} is not a {kind} folder: {META_NAME} is missing; {REFIT}")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); the {kind} is corrupt: {REFIT}") from None
    if not isinstance(meta, dict) or meta.get("reinforge_monitor") != kind:
        got = meta.get("reinforge_monitor") if isinstance(meta, dict) else None
        raise ValueError(f"{f} describes a {got!r}, not a {kind!r}; point to the {kind} folder or {REFIT}")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{f} has format version {meta.get('version')!r}, this reinforge reads {FORMAT_VERSION}; "
                         f"{REFIT}")
    return meta


def read_monitor(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and meta of the monitor folder ``path`` of ``kind``; a missing, corrupt or foreign folder, or
    a non-finite tensor, is a ``ValueError``. Check the tensors' shapes with ``check_tensors``."""
    folder = settle(path)
    if not folder.is_dir():
        raise ValueError(f"no {kind} at {folder}: {REFIT} (--out {folder})")
    meta = _read_meta(folder, kind)
    f = folder / TENSORS_NAME
    if not f.is_file():
        raise ValueError(f"{folder}: {TENSORS_NAME} is missing; the {kind} is incomplete: {REFIT}")
    try:
        tensors = load_file(str(f))
    except Exception as e:  # safetensors raises its own error type for truncated or foreign files
        raise ValueError(f"{f} is not a readable safetensors file ({type(e).__name__}: {e}); the {kind} is "
                         f"corrupt: {REFIT}") from None
    nonfinite = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ValueError(f"{f} holds NaN or inf ({', '.join(nonfinite)}); the {kind} is corrupt: {REFIT}")
    return tensors, meta


def check_tensors(tensors: dict[str, torch.Tensor], expect: dict[str, tuple[int, ...]], folder: str | Path,
                  kind: str) -> None:
    """Refuse tensors whose names or shapes differ from ``expect`` (name -> shape), naming what differs."""
    missing, extra = sorted(set(expect) - set(tensors)), sorted(set(tensors) - set(expect))
    wrong = sorted(k for k in set(expect) & set(tensors) if tuple(tensors[k].shape) != tuple(expect[k]))
    if missing or extra or wrong:
        raise ValueError(f"{Path(folder) / TENSORS_NAME} does not fit its {META_NAME} (missing {missing}, "
                         f"unexpected {extra}, wrong shape {wrong}); the {kind} is corrupt: {REFIT}")


def meta_number(meta: dict[str, Any], key: str, folder: str | Path, *, integer: bool = False) -> float:
    """A finite number ``meta[key]`` of a monitor's meta, or a ``ValueError`` saying the file is corrupt."""
    v = meta.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (not integer or v == int(v))
    if not ok:
        raise ValueError(f"{Path(folder) / META_NAME}: {key!r} must be a finite {'integer' if integer else 'number'}"
                         f", got {v!r}; the file is corrupt: {REFIT}")
    return int(v) if integer else float(v)
