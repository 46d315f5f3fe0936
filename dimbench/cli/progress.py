"""Progress of a long command that reports stages (``report(what, done, total)``): a rich bar on
a terminal; on anything else (a CI log, a pipe) one plain line per stage on stderr, flushed at
once, so a log shows where the command is instead of nothing for minutes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Report = Callable[[str, int, int], None]


@contextmanager
def stage_progress(console: Console, name: str) -> Iterator[Report]:
    """A ``report(what, done, total)`` for the block: a transient rich Progress where
    ``console`` is a terminal, else a line ``NAME [done/total] what (elapsed)`` per stage."""
    if not console.is_terminal:
        start = time.perf_counter()

        def plain(what: str, done: int, total: int) -> None:
            elapsed = time.perf_counter() - start
            print(f"{name} [{done}/{total}] {what} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task(name, total=1)

        def bar(what: str, done: int, total: int) -> None:
            progress.update(task, description=what[:70], completed=done, total=max(total, 1))

        yield bar
