"""Atomic folder writes: build a folder under a temporary name, then swap it into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def temp_dir_for(dest: str | Path, tag: str = "writing") -> Path:
    """A fresh, empty sibling folder of ``dest`` to build into."""
    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{tag}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def replace_dir(tmp: Path, dest: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``dest``; an existing ``dest`` is replaced only once ``tmp`` is
    complete, so a crash leaves either the old or the new folder, never a half-written one."""
    dest = Path(dest)
    if dest.exists():
        old = dest.with_name(dest.name + ".tmp-old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dest)
    return dest
