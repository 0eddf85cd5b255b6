"""Devices and precision: where the policy runs (``device``) and in what precision (``precision``).

The policy device and the env device are separate settings (``device`` and ``env.device`` in configs): a CPU
simulator with a CUDA policy is the common case for real simulators; the built-in world runs on either.
Nothing caches a device on a module: it is read from the tensors (``module_device``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16"]


def resolve_device(spec: str | torch.device, what: str = "device") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (CUDA when available) as a checked device."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {spec!r} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={spec} but this torch build sees no CUDA device (torch {torch.__version__}); "
                             f"use {what}=cpu, or install a CUDA build of torch on a machine with a GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what}={spec} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}={spec} but MPS is not available here; use {what}=cpu")
    return dev


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device, what: str = "precision") -> None:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"{what} must be 'fp32' or 'bf16', got {precision!r}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"{what}=bf16 is a CUDA option (autocast); the policy runs on {device}: use fp32")


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """bf16 autocast on CUDA for ``precision="bf16"``; a no-op otherwise (losses and log-probs that autocast
    keeps in fp32, such as log_softmax, stay fp32)."""
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def obs_to(obs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The observation with its tensors on ``device`` (lists such as instructions unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in obs.items()}
