"""Atomic, resumable training checkpoints: the policy (save_pretrained) plus the trainer state.

The trainer state (optimizer, scheduler, step, RNG states) is a dict of tensors and plain values saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``: nothing is unpickled. A checkpoint
folder is written under a temporary name and renamed into place, so a run killed mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reinforge.fsutil import replace_dir, temp_dir_for
from reinforge.policies import Policy, PolicyConfig, load_pretrained

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(path: str | Path, policy: Policy, trainer_state: dict[str, Any]) -> Path:
    tmp = temp_dir_for(path, "ckpt")
    policy.save_pretrained(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    return replace_dir(tmp, path)


def load_checkpoint(path: str | Path, expect: PolicyConfig | None = None) -> tuple[Policy, dict[str, Any]]:
    """The policy and trainer state of a checkpoint; with ``expect``, refuse one of another policy config."""
    path = Path(path)
    f = path / TRAINER_STATE
    if not f.is_file():
        raise ValueError(f"{path} is not a resumable checkpoint: {TRAINER_STATE} is missing")
    return load_pretrained(path, expect=expect), torch.load(f, weights_only=True)
