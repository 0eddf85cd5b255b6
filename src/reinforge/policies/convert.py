"""What the checkpoint converters share (``reinforge convert``: convert_openvla.py, convert_lerobot.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reinforge.fsutil import check_replaceable


class ConversionError(ValueError):
    """A checkpoint cannot be converted (the message says why and what to do)."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} cannot be read as JSON ({e})") from None


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over a non-empty ``out`` without ``--overwrite``, and over anything reinforge did not write."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_replaceable(out, "policy")
