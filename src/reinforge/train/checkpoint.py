"""Atomic, resumable training checkpoints: the policy (save_pretrained) plus the trainer state.

The trainer state (optimizer, scheduler, step, RNG states, the run's config and kind) is a dict of tensors and plain
values saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``: nothing is unpickled. A
checkpoint folder is written under a temporary name and swapped into place (``reinforge.fsutil``), so a run
killed at any point keeps a complete checkpoint. Non-finite weights or optimizer state are never written: a
diverged run keeps its last good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reinforge import fsutil
from reinforge.fsutil import read_manifest, settle
from reinforge.policies import Policy, PolicyConfig, load_pretrained

TRAINER_STATE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint on disk is missing, corrupt, or of another kind of run."""


class DivergedError(FloatingPointError):
    """Training produced non-finite weights, optimizer state or losses."""


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf."""
    if isinstance(state, torch.Tensor):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [n for k, v in state.items() for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(state, list | tuple):
        return [n for i, v in enumerate(state) for n in nonfinite_tensors(v, f"{prefix}[{i}]")]
    return []


def begin_checkpoint(path: str | Path, policy: Policy, trainer_state: dict[str, Any]) -> Path:
    """Write a checkpoint into a temporary folder next to ``path`` (see ``commit_checkpoint``); ``DivergedError``
    (and nothing written) if the weights or the trainer state hold NaN or inf."""
    bad = nonfinite_tensors(dict(policy.state_dict())) + nonfinite_tensors(trainer_state)
    if bad:
        raise DivergedError(f"non-finite values in {', '.join(bad[:3])}")
    tmp = fsutil.begin(path, "checkpoint")
    try:
        policy.write_files(tmp)
        with fsutil.write_guard(tmp / TRAINER_STATE):
            torch.save(trainer_state, tmp / TRAINER_STATE)
    except BaseException:
        fsutil.abort(tmp)
        raise
    return tmp


def commit_checkpoint(tmp: Path, path: str | Path, trainer_state: dict[str, Any]) -> Path:
    """Swap a folder from ``begin_checkpoint`` into ``path``."""
    return fsutil.commit(tmp, path, "checkpoint", run_meta(trainer_state))


def save_checkpoint(path: str | Path, policy: Policy, trainer_state: dict[str, Any]) -> Path:
    """Write the policy and trainer state into ``path`` atomically; ``DivergedError`` (and nothing written)
    if either holds NaN or inf."""
    tmp = begin_checkpoint(path, policy, trainer_state)
    try:
        return commit_checkpoint(tmp, path, trainer_state)
    except BaseException:
        fsutil.abort(tmp)
        raise


def run_meta(trainer_state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's manifest says of its run (read without loading the trainer state)."""
    meta = {k: trainer_state[k] for k in ("step", "iteration") if isinstance(trainer_state.get(k), int)}
    if "kind" in trainer_state:
        meta["run"] = trainer_state["kind"]
    return meta


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint (after finishing a swap a kill interrupted)."""
    return settle(path).is_dir()


def load_checkpoint(path: str | Path, expect: PolicyConfig | None = None, kind: str | None = None
                    ) -> tuple[Policy, dict[str, Any]]:
    """The policy and trainer state of a checkpoint; with ``expect``, refuse one of another policy config, with
    ``kind`` (``sft`` / ``rl``) one of another kind of run."""
    path = settle(path)
    f = path / TRAINER_STATE
    if not f.is_file():
        raise CheckpointError(f"{path} is not a resumable checkpoint: {TRAINER_STATE} is missing")
    try:
        state = torch.load(f, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types for truncated or foreign files; never unpickle them
        first = (str(e).strip().splitlines() or [""])[0][:120]
        if "weights" in first.lower() or not first:  # torch's advice to unpickle it is not for us to give
            first = "it holds something other than plain tensors and values"
        raise CheckpointError(f"{f} is corrupt or not a reinforge trainer state ({first}); "
                              f"delete {path} to start over, or restore it from a backup") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{f} is not a reinforge trainer state (a {type(state).__name__})")
    found = state.get("kind") or ("rl" if "iteration" in state else "sft" if "step" in state else "?")
    if kind is not None and found != kind:
        names = {"sft": "an SFT run (`reinforge sft`)", "rl": "an RL run (`reinforge train`)"}
        raise CheckpointError(f"{path} belongs to {names.get(found, 'another kind of run')}, not "
                              f"{names.get(kind, kind)}: choose another out=")
    return load_pretrained(path, expect=expect), state


def checkpoint_kind(path: str | Path) -> str | None:
    """``sft`` / ``rl`` for a checkpoint folder, None when there is none."""
    path = settle(path)
    if not (path / TRAINER_STATE).is_file():
        return None
    kind = (read_manifest(path) or {}).get("run")
    if kind in ("sft", "rl"):
        return kind
    try:
        state = torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")
    except Exception:
        return "?"
    if not isinstance(state, dict):
        return "?"
    return state.get("kind") or ("rl" if "iteration" in state else "sft" if "step" in state else "?")


def check_run_kind(out: str | Path, kind: str) -> None:
    """Refuse to run a ``kind`` run in a folder that holds another kind of run (whatever ``resume`` says)."""
    ckpt = Path(out) / "checkpoints" / "last"
    found = checkpoint_kind(ckpt)
    if found in ("sft", "rl") and found != kind:  # an unreadable one is reported when it is loaded
        names = {"sft": "an SFT run (`reinforge sft`)", "rl": "an RL run (`reinforge train`)"}
        raise CheckpointError(f"{out} holds {names.get(found, 'another kind of run')}; choose another out= for "
                              f"{names.get(kind, kind)}")


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"a.b.c": value}."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every dotted key whose value differs between two config dicts."""
    a, b = flat(old), flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def refuse_changes(changes: list[tuple[str, Any, Any]], fixed: tuple[str, ...], out: str | Path) -> None:
    """Raise naming the changed keys that a resumed run cannot take (``fixed``: keys or ``section.`` prefixes)."""
    bad = [(k, was, now) for k, was, now in changes if any(k == f or (f.endswith(".") and k.startswith(f))
                                                             for f in fixed)]
    if bad:
        what = ", ".join(f"{k}={was!r} (now {now!r})" for k, was, now in bad)
        raise CheckpointError(f"{out} holds a run with {what}: a resumed run cannot change "
                              f"{'this' if len(bad) == 1 else 'these'}; choose another out=, or resume=false to "
                              "start over there")


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {was!r} -> {now!r}" for k, was, now in changes)
