"""What a run needs to be re-made: the code (commit, and whether the tree had local changes), the software
(Python, torch, numpy versions), the machine (CPU, cores, torch threads, accelerator), the command line and the
seeds. Every trainer writes it as ``provenance.json`` beside its ``config.yaml``; results files carry it too.

Numbers on the CPU depend on the torch thread count (parallel reductions split their sums by thread), so the
same seed on another thread count is a different run: ``threads`` is part of what makes a number.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = _REPO) -> tuple[str, bool | None]:
    """(commit, dirty) of the source tree this package runs from; ("", None) outside a git checkout (an
    installed wheel)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # local edits to tracked files (run folders and other untracked files do not change the code)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "", None
    return commit, dirty


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(*, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-ready record of the code, software, machine and command of this process."""
    import numpy as np
    import torch

    from reinforge import __version__

    commit, dirty = git_commit()
    record: dict[str, Any] = {
        "reinforge": __version__, "commit": commit, "dirty": dirty,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "platform": platform.platform(),
    }
    if seed is not None:
        record["seed"] = int(seed)
    record.update(extra)
    return record


def machine_line(p: dict[str, Any]) -> str:
    """``Intel Xeon ... (2 cores), torch 2.13.0, 2 threads`` from a provenance record."""
    where = p.get("cuda") or f"{p.get('cpu', '?')} ({p.get('cpu_count', '?')} cores)"
    return f"{where}, torch {p.get('torch', '?')}, {p.get('threads', '?')} threads"


def record_run(out: str | Path, *, seed: int, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``out/provenance.json`` at the start of a run (with its config); a resumed run keeps the first
    record and appends its own to ``resumes`` (a run resumed on other code or threads shows it)."""
    import json

    from reinforge.fsutil import write_text_atomic

    path = Path(out) / "provenance.json"
    now = provenance(seed=seed, config=config)
    try:
        first = json.loads(path.read_text())
        if not isinstance(first, dict):
            raise ValueError
    except (OSError, ValueError):
        first = None
    if first is None:
        record = now
    else:
        record = {**first, "resumes": [*first.get("resumes", []),
                                       {k: v for k, v in now.items() if k != "config"}]}
    write_text_atomic(path, json.dumps(record, indent=2, default=str))
    return record


def runs_provenance(folders: list[str | Path], *, allow_dirty: bool = False) -> dict[str, Any]:
    """The provenance shared by the runs behind one table: each folder's ``provenance.json`` (written by
    ``record_run``) must exist and name the same commit, made from a clean tree unless ``allow_dirty``; the first
    folder's record. Raises ``ValueError`` naming the folder otherwise (a table mixes no commits)."""
    import json

    records = {}
    for folder in folders:
        path = Path(folder) / "provenance.json"
        try:
            records[str(folder)] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: no readable provenance record ({e}); re-run that run on this code") from None
    if not records:
        raise ValueError("no runs given")
    commits = {r.get("commit") for r in records.values()}
    if len(commits) != 1:
        by = {c: [f for f, r in records.items() if r.get("commit") == c] for c in commits}
        raise ValueError(f"the runs come from different commits: {by}; re-run them on one commit")
    dirty = [f for f, r in records.items() if r.get("dirty")]
    if dirty and not allow_dirty:
        raise ValueError(f"{dirty[0]} was made from a tree with local changes; commit and re-run (or allow it)")
    return next(iter(records.values()))
