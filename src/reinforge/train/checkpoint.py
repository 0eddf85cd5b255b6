"""Atomic, resumable training checkpoints: the policy (save_pretrained) plus the trainer state.

The trainer state (optimizer, scheduler, step, RNG states) is a dict of tensors and plain values saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``: nothing is unpickled. A checkpoint
folder is written under a temporary name and renamed into place, so a run killed mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from reinforge.policies import Policy, load_pretrained

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(path: str | Path, policy: Policy, trainer_state: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp-ckpt")
    if tmp.exists():
        shutil.rmtree(tmp)
    policy.save_pretrained(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    if path.exists():
        old = path.with_name(path.name + ".tmp-old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[Policy, dict[str, Any]]:
    path = Path(path)
    f = path / TRAINER_STATE
    if not f.is_file():
        raise ValueError(f"{path} is not a resumable checkpoint: {TRAINER_STATE} is missing")
    return load_pretrained(path), torch.load(f, weights_only=True)
