"""Worker processes die with their parent, and the parent's shared memory is freed (``envs/watchdog.py``).

A parent process starts workers the way the LIBERO adapter does (spawned, attached to a shared-memory block the
parent created) and is killed with SIGKILL: no worker may survive it, through either line of defence (the
kernel's parent-death signal, or the watch thread alone), and the block must be gone from /dev/shm.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc and /dev/shm")

PARENT = '''
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.shared_memory import SharedMemory

from reinforge.envs.watchdog import die_with_parent, parent_token


def worker(token, name, busy):
    die_with_parent(token, poll_s=0.2)
    block = SharedMemory(name=name)
    if busy:
        while True:  # computing, never waiting on the parent's pipe
            sum(range(1000))
    time.sleep(600)


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    block = SharedMemory(create=True, size=4096)
    pid, main_thread = parent_token()
    tokens = [(pid, main_thread), (pid, main_thread), (pid, False)]  # the last: the watch thread alone
    procs = [ctx.Process(target=worker, args=(t, block.name, k == 1)) for k, t in enumerate(tokens)]
    for p in procs:
        p.start()
    time.sleep(1.5)  # the workers have attached and armed their watchdogs
    print(block.name, *[p.pid for p in procs], flush=True)
    time.sleep(600)
'''


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "State:\tZ" not in status  # a zombie has exited


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_workers_die_with_a_killed_parent_and_its_shared_memory_is_freed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL)
    try:
        line = parent.stdout.readline().split()
        assert line, "the parent did not start its workers"
        name, pids = line[0], [int(x) for x in line[1:]]
        assert all(_alive(p) for p in pids) and Path(f"/dev/shm/{name}").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait(lambda: not any(_alive(p) for p in pids), 10), \
            f"workers outlived their parent: {[p for p in pids if _alive(p)]}"
        assert _wait(lambda: not Path(f"/dev/shm/{name}").exists(), 10), "the shared-memory block was left behind"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in locals().get("pids", []):
            if _alive(p):
                os.kill(p, signal.SIGKILL)
