"""Worker processes that never outlive their parent.

A simulator worker (a LIBERO process, a MetaWorld or Ray env worker's subprocess) holds gigabytes; if the process
that started it dies (killed by the kernel for memory, ``kill -9``, a crash), nothing else stops it. Every worker
calls ``die_with_parent`` first thing:

- on Linux the kernel sends it SIGKILL the moment its parent dies (``prctl(PR_SET_PDEATHSIG)``): this works even
  while the worker is inside a long C call (MuJoCo stepping, EGL rendering) that holds the GIL;
- elsewhere (and as a second line on Linux) a daemon thread checks once a second whether the parent is still the
  one that started it, and exits the process when it is not.

Shared-memory blocks the parent created are then freed by Python's resource tracker, which unlinks what the
parent registered once the parent and all its workers are gone (the parent unlinks them itself on a normal exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def parent_token() -> tuple[int, bool]:
    """What the parent passes to a worker it starts: its pid, and whether it starts the worker from its main thread
    (the kernel's parent-death signal fires when the *thread* that started the process exits, so it is armed only
    for workers started from the main thread)."""
    return os.getpid(), threading.current_thread() is threading.main_thread()


def die_with_parent(token: tuple[int, bool], *, poll_s: float = 1.0,
                    on_orphan: Callable[[], None] | None = None) -> None:
    """Make this process exit as soon as the parent named by ``token`` (``parent_token()`` in the parent) is gone.

    ``on_orphan`` runs (errors ignored) before the exit when the watch thread, not the kernel, notices it."""
    parent_pid, from_main_thread = token
    if sys.platform.startswith("linux") and from_main_thread:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch thread still covers it
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        _orphaned(on_orphan)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                _orphaned(on_orphan)

    threading.Thread(target=watch, name="reinforge-parent-watch", daemon=True).start()


def _orphaned(on_orphan: Callable[[], None] | None) -> None:
    if on_orphan is not None:
        with contextlib.suppress(Exception):
            on_orphan()
    os._exit(1)
