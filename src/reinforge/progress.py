"""One progress-bar helper (rich) for every long-running loop; a no-op when disabled."""

from __future__ import annotations

from typing import Any


class ProgressBar:
    """``advance(n)`` / ``update(completed, **fields)`` / ``close()``; shows ``fields`` after the bar."""

    def __init__(self, desc: str, total: int | None, start: int = 0, enabled: bool = True, **fields: Any):
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        columns += [TextColumn(f"{k} {{task.fields[{k}]}}") for k in fields]
        self.p = Progress(*columns, transient=True)
        self.p.start()
        self.task = self.p.add_task(desc, total=total, completed=start, **fields)

    def advance(self, n: int = 1) -> None:
        if self.p is not None:
            self.p.advance(self.task, n)

    def update(self, completed: int, **fields: Any) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=completed, **fields)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
