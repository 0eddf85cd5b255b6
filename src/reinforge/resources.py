"""Will it fit? Memory checks made before a run builds its simulators.

Real simulators cost memory per env (a LIBERO env ~0.8 GB, each LIBERO worker process ~1.2 GB more, a MetaWorld
env ~0.1 GB; measured figures are in each env's ``memory_estimate``). A run that asks for more than the machine
has would otherwise be killed by the kernel without a word, and take other processes with it. Before building
envs, a run lists what it is about to hold (``Need``) and ``check_fits`` compares the sum with the memory the
machine has available now (what the process already holds, the policy included, is already subtracted). When it
does not fit, it stops with one line naming the biggest item's setting and a value that fits.

``REINFORGE_MEMORY_GB`` states the budget instead of the measured one (for a shared machine, or to try a plan).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

MEMORY_ENV_VAR = "REINFORGE_MEMORY_GB"
# what the check leaves free for everything it does not count (activations, rollout buffers, the OS): a share of
# the available memory, at least this much
HEADROOM = 0.10
MIN_HEADROOM_MB = 1024.0


class NotEnoughMemory(ValueError):
    """A run would need more memory than the machine has."""


@dataclass(frozen=True)
class Knob:
    """A setting that shrinks a ``Need``: each unit of it costs ``per_unit_mb``; it is ``value`` now."""

    setting: str  # e.g. "rollout.num_groups"
    per_unit_mb: float
    value: int
    minimum: int = 1  # the smallest value the setting takes
    advice: str = "set {setting}={fit} or less"  # what to tell the user, given the largest value that fits


@dataclass(frozen=True)
class Need:
    """An item a run is about to hold: ``fixed_mb`` plus ``knobs[0].per_unit_mb * knobs[0].value``. Each knob is a
    setting that shrinks it (the first one tried first); no knobs: it cannot be shrunk by a setting."""

    label: str  # e.g. "rollout: 16 LIBERO envs in 2 worker processes"
    fixed_mb: float
    knobs: tuple[Knob, ...] = ()

    @property
    def mb(self) -> float:
        return self.fixed_mb + (self.knobs[0].per_unit_mb * self.knobs[0].value if self.knobs else 0.0)


def _meminfo_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available_mb() -> float | None:
    """Room left under this process's cgroup (v2) memory limit, if it has one."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].split(":", 2)[2]
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return (int(limit) - int((base / "memory.current").read_text())) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def available_mb() -> float | None:
    """Memory this process may still take, in MiB: ``REINFORGE_MEMORY_GB`` if set, else the smaller of the
    kernel's MemAvailable and the room under a cgroup limit; None where neither can be read."""
    stated = os.environ.get(MEMORY_ENV_VAR)
    if stated:
        try:
            gb = float(stated)
        except ValueError:
            raise NotEnoughMemory(f"{MEMORY_ENV_VAR}={stated!r} is not a number of gigabytes") from None
        if not gb > 0:
            raise NotEnoughMemory(f"{MEMORY_ENV_VAR}={stated!r} must be a positive number of gigabytes")
        return gb * 1024
    found = [x for x in (_meminfo_available_mb(), _cgroup_available_mb()) if x is not None]
    return min(found) if found else None


def process_pss_mb(pid: int) -> float | None:
    """A process's proportional set size (its share of shared pages counted once across processes), MiB; None where
    it cannot be read (not Linux, or the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def budget_mb(available: float | None = None) -> float | None:
    """What a run may plan to hold: the available memory less the headroom (None where it cannot be read)."""
    avail = available_mb() if available is None else available
    return None if avail is None else avail - max(MIN_HEADROOM_MB, HEADROOM * avail)


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


def check_fits(needs: list[Need], what: str = "this run", available: float | None = None) -> float:
    """Raise ``NotEnoughMemory`` (one line: what is needed, what is there, the setting to change and a value that
    fits) when ``needs`` do not fit the available memory less a headroom. Returns the MiB needed."""
    total = sum(n.mb for n in needs)
    avail = available_mb() if available is None else available
    if avail is None or not needs:
        return total
    budget = budget_mb(avail)
    if total <= budget:
        return total
    parts = "; ".join(f"{n.label} ~{_gb(n.mb)}" for n in needs if n.mb >= 1)
    raise NotEnoughMemory(f"{what} needs about {_gb(total)} of memory ({parts}) but {_gb(avail)} is available "
                          f"(keeping {_gb(avail - budget)} free); {_advice(needs, total, budget)}")


def _advice(needs: list[Need], total: float, budget: float) -> str:
    """The first setting, of the biggest item first, whose value can be lowered enough; else what to do."""
    for n in sorted(needs, key=lambda n: -n.mb):
        for k in n.knobs:
            if k.per_unit_mb <= 0:
                continue
            room = budget - (total - n.mb) - (n.mb - k.per_unit_mb * k.value)
            fit = math.floor(room / k.per_unit_mb) if room > 0 else 0
            if k.minimum <= fit < k.value:
                return k.advice.format(setting=k.setting, fit=fit)
    return "free memory, or run on a machine with more"
