"""Atomic folder and file writes that survive a kill -9 at any point, and refuse to delete what they did not write.

A folder (a dataset, a policy, a checkpoint) is built under ``DEST.tmp-writing``, its files are synced, and it is
renamed to ``DEST.tmp-ready``: from then on it is complete. The swap renames an existing ``DEST`` to
``DEST.tmp-old``, ``DEST.tmp-ready`` to ``DEST``, and deletes ``DEST.tmp-old``. A kill between any two steps
leaves at least one complete folder, and ``settle(DEST)`` (called by every reader and writer) finishes the
interrupted swap: a ready folder wins (it is the newest complete one), else the old one is put back, and a
half-written ``.tmp-writing`` is deleted.

Every atomic folder holds a manifest, ``.reinforge.json``: its kind and the files it was written with. A folder
is replaced only when it is empty or is a reinforge folder of the same kind holding nothing but its own files;
anything else is refused (``--overwrite`` never deletes what reinforge did not write). Folders written before
manifests existed are recognised by their layout.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

MANIFEST = ".reinforge.json"
WRITING, READY, OLD = ".tmp-writing", ".tmp-ready", ".tmp-old"
# test-only fault injection: pause inside the swap (after DEST was moved aside) of a folder whose path contains
# $REINFORGE_TEST_SWAP_PAUSE_MATCH, after touching the file named by $REINFORGE_TEST_SWAP_PAUSE
PAUSE_ENV, PAUSE_MATCH_ENV = "REINFORGE_TEST_SWAP_PAUSE", "REINFORGE_TEST_SWAP_PAUSE_MATCH"

# the files each kind of folder is made of (for folders written before manifests existed)
LAYOUTS = {
    "dataset": ("meta/info.json", "meta/tasks.jsonl", "meta/episodes.jsonl", "meta/stats.json",
                "data/chunk-*/episode_*.parquet"),
    "policy": ("config.json", "model.safetensors", "normalization.json"),
    "checkpoint": ("config.json", "model.safetensors", "normalization.json", "trainer_state.pt"),
}
# a file that identifies a legacy folder of that kind, and a string it contains
SIGNATURES = {"dataset": ("meta/info.json", "reinforge"), "policy": ("config.json", "reinforge_policy"),
              "checkpoint": ("trainer_state.pt", "")}


class UnsafeWriteError(ValueError):
    """Writing would delete something reinforge did not write."""


def _sibling(dest: Path, suffix: str) -> Path:
    return dest.with_name(dest.name + suffix)


def _rmtree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def settle(dest: str | Path) -> Path:
    """Finish a swap of ``dest`` that a kill interrupted, and return the folder to read (``dest`` itself, unless
    the file system is read-only and the complete folder still has its temporary name)."""
    dest = Path(dest)
    writing, ready, old = _sibling(dest, WRITING), _sibling(dest, READY), _sibling(dest, OLD)
    if _in_use(dest):  # another live process is building or swapping it in: its folders are not leftovers
        return next((c for c in (dest, old, ready) if c.exists()), dest)
    try:
        _rmtree(writing)
        for legacy in (".tmp-ckpt", ".tmp-saving"):  # half-written folders of earlier versions
            _rmtree(_sibling(dest, legacy))
        if dest.exists() and old.exists():
            _rmtree(old)
        if ready.exists():
            if dest.exists():
                os.replace(dest, old)
            os.replace(ready, dest)
            _rmtree(old)
        elif old.exists() and not dest.exists():
            os.replace(old, dest)
    except OSError:
        for cand in (dest, ready, old):
            if cand.exists():
                return cand
    return dest


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a reinforge folder (kind, files and the writer's meta), or None."""
    return _manifest(Path(root))


def _manifest(root: Path) -> dict | None:
    f = root / MANIFEST
    if not f.is_file():
        return None
    try:
        m = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), list) else None


def _legacy_kind_ok(root: Path, kind: str, files: list[str]) -> bool:
    sig, needle = SIGNATURES[kind]
    f = root / sig
    try:
        if not f.is_file() or (needle and needle not in f.read_text(errors="replace")):
            return False
    except OSError:
        return False
    return all(any(fnmatch.fnmatch(x, pat) for pat in LAYOUTS[kind]) for x in files)


def check_replaceable(dest: str | Path, kind: str, what: str = "") -> None:
    """Refuse (``UnsafeWriteError``) to replace ``dest`` unless it is missing, empty, or a reinforge ``kind``
    folder holding only the files reinforge wrote into it."""
    dest = Path(dest)
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UnsafeWriteError(f"{dest} is a file, not a {kind} folder; choose another path {what}".rstrip())
    files = _files(dest)
    if not files:
        return
    where = f"; choose another path {what}".rstrip() if what else "; choose another path"
    m = _manifest(dest)
    if m is not None:
        if m.get("kind") != kind:
            raise UnsafeWriteError(f"refusing to replace {dest}: it holds a reinforge {m.get('kind')}, not a "
                                   f"{kind}{where}")
        extra = [f for f in files if f != MANIFEST and f not in set(m["files"])]
        if extra:
            raise UnsafeWriteError(f"refusing to replace {dest}: it holds files reinforge did not write "
                                   f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}); move them away"
                                   f"{where}")
        return
    if not _legacy_kind_ok(dest, kind, files):
        raise UnsafeWriteError(f"refusing to replace {dest}: it is not a reinforge {kind} ({len(files)} file(s) "
                               f"reinforge did not write, e.g. {files[0]}){where}")


def begin(dest: str | Path, kind: str, what: str = "") -> Path:
    """Start writing folder ``dest`` of ``kind``: settle an interrupted swap, refuse a ``dest`` that is not ours
    to replace, and return a fresh, empty temporary folder to build into."""
    dest = Path(dest)
    _release(dest)  # a folder this process began before and never finished is abandoned
    if _in_use(dest):
        raise _busy(dest)
    settle(dest)
    check_replaceable(dest, kind, what)
    tmp = _sibling(dest, WRITING)
    _rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
    except FileExistsError:  # another process began the same folder a moment ago
        raise _busy(dest) from None
    _claim(dest, tmp)
    return tmp


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: Path, dest: str | Path, kind: str, meta: dict | None = None) -> Path:
    """Finish the folder built in ``tmp`` (from ``begin``): write its manifest (with ``meta``, small facts a
    reader may want without opening the folder's files), sync it, and swap it into ``dest``."""
    dest = Path(dest)
    files = _files(tmp)
    (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "files": files, **(meta or {})}))
    for f in files + [MANIFEST]:
        _fsync(tmp / f)
    for d in {tmp / f for f in files} | {tmp / MANIFEST}:
        _fsync(d.parent, directory=True)
    ready, old = _sibling(dest, READY), _sibling(dest, OLD)
    os.replace(tmp, ready)
    if dest.exists():
        os.replace(dest, old)
        _test_pause(dest)
    os.replace(ready, dest)
    _fsync(dest.parent, directory=True)
    _rmtree(old)
    _release(dest)
    return dest


def abort(tmp: Path) -> None:
    """Delete a temporary folder whose writing failed."""
    with contextlib.suppress(OSError):
        _rmtree(tmp)
    if tmp.name.endswith(WRITING):
        _release(tmp.with_name(tmp.name[: -len(WRITING)]))


# ------------------------------------------------------------ one writer per folder

HELD, BUSY, UNLOCKED = "held", "busy", "unlocked"


def _try_flock(fd: int) -> str:
    """Take an exclusive ``flock`` on ``fd`` without waiting: HELD, BUSY (another open file holds it) or
    UNLOCKED (no locks here: not POSIX, or a file system without them). The kernel drops it when ``fd`` is
    closed or the process dies, kill -9 included."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return UNLOCKED
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return BUSY
    except OSError:
        return UNLOCKED
    return HELD


_WRITERS: dict[str, int] = {}  # destination folder -> descriptor of its temporary folder, holding a flock


def _busy(dest: Path) -> RunInUseError:
    return RunInUseError(f"{dest} is being written by another reinforge process; wait for it to end or choose "
                         "another path")


def _key(dest: Path) -> str:
    return str(dest.absolute())


def _claim(dest: Path, tmp: Path) -> None:
    """Hold an exclusive flock on the temporary folder ``tmp`` of ``dest`` until commit or abort. The lock moves
    with the folder through its renames, and the kernel drops it when the process dies (kill -9 included), so
    other processes can tell a live writer's folders from a killed one's leftovers. Best effort: two writers
    that begin the same folder within microseconds of each other can still race between mkdir and flock."""
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    state = _try_flock(fd)
    try:
        same = state == HELD and os.path.samestat(os.fstat(fd), os.stat(tmp))
    except OSError:  # the folder vanished: another process took its place
        same = False
    if state == HELD and same:
        _WRITERS[_key(dest)] = fd
        return
    os.close(fd)
    if state != UNLOCKED:  # locked by another process, or replaced by one between our mkdir and our lock
        raise _busy(dest)


def _release(dest: Path) -> None:
    fd = _WRITERS.pop(_key(dest), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def _locked_by_other(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        return _try_flock(fd) == BUSY
    finally:
        os.close(fd)  # drops the lock if we took it


def _in_use(dest: Path) -> bool:
    """Whether another live process is building (``.tmp-writing``) or swapping in (``.tmp-ready``) ``dest``."""
    return _key(dest) not in _WRITERS and any(_locked_by_other(_sibling(dest, sfx)) for sfx in (WRITING, READY))


@contextlib.contextmanager
def atomic_dir(dest: str | Path, kind: str, what: str = "", meta: dict | None = None) -> Iterator[Path]:
    """``with atomic_dir(dest, "policy") as tmp:`` build the folder in ``tmp``; it replaces ``dest`` when the
    block succeeds, and is deleted when it raises."""
    tmp = begin(dest, kind, what)
    try:
        yield tmp
    except BaseException:
        abort(tmp)
        raise
    try:
        commit(tmp, dest, kind, meta)
    except BaseException:
        abort(tmp)
        raise


@contextlib.contextmanager
def write_guard(path: str | Path) -> Iterator[None]:
    """Turn the errors that serialisers (torch.save, safetensors) raise on a full or read-only disk into an
    ``OSError`` naming ``path``."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        text = str(e)
        code = errno.ENOSPC if ("No space" in text or "StorageFull" in text or "code: 28" in text) else \
            errno.EROFS if "Read-only" in text else errno.EIO
        raise OSError(code, os.strerror(code) if code != errno.EIO else f"writing failed ({type(e).__name__})",
                      str(path)) from e


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace the file ``path`` with ``text`` in one rename (a kill leaves the old or the new content)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


class RunInUseError(ValueError):
    """Another process is writing the same run folder."""


_HELD: dict[str, list[int]] = {}  # run folder -> [lock file descriptor, acquisitions in this process]
LOCK_NAME = ".lock"


def lock_run(out: str | Path) -> None:
    """Claim the run folder ``out`` for this process (re-entrant within it), so that two processes never train
    into one folder at once; a second one gets ``RunInUseError``. The claim is an exclusive ``flock`` on
    ``out/.lock``, which the kernel drops when the process dies, kill -9 included."""
    out = Path(out)
    key = str(out.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    state = _try_flock(fd)
    if state == BUSY:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunInUseError(f"{out} is being written by another reinforge process (pid {pid}); wait for it to end "
                            "or choose another out=")
    if state == UNLOCKED:  # no locks here: run unclaimed
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = [fd, 1]


def unlock_run(out: str | Path) -> None:
    """Give back one claim of ``lock_run``; the last one releases the folder."""
    key = str(Path(out).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor drops the flock


def _test_pause(dest: Path) -> None:
    signal = os.environ.get(PAUSE_ENV)
    if not signal or os.environ.get(PAUSE_MATCH_ENV, "") not in str(dest):
        return
    Path(signal).write_text(str(dest))
    time.sleep(3600)  # the test kills the process here
