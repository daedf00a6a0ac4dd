"""Progress reporting for long transfers: a rich display on a terminal, plain log lines otherwise.

Code that moves data takes a `ProgressReporter` and calls `start`/`advance`/`finish` per item
(keyed by any string, e.g. a digest) and `log` for events; `progress_reporter()` picks the
implementation for the current stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:  # rich is imported only when a terminal shows the progress (saves start-up time)
    from rich.console import Console
    from rich.progress import TaskID


class ProgressReporter(Protocol):
    def log(self, message: str) -> None: ...

    def start(self, key: str, description: str, total: int | None) -> None: ...

    def advance(self, key: str, amount: int) -> None: ...

    def reset(self, key: str) -> None: ...

    def finish(self, key: str, outcome: str) -> None: ...


def format_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class NullProgress:
    """Reports nothing (library use, tests)."""

    def log(self, message: str) -> None:
        pass

    def start(self, key: str, description: str, total: int | None) -> None:
        pass

    def advance(self, key: str, amount: int) -> None:
        pass

    def reset(self, key: str) -> None:
        pass

    def finish(self, key: str, outcome: str) -> None:
        pass


FAILED = "failed"


def _outcome_line(description: str, outcome: str, elapsed: float, done: int) -> str:
    """`push 1a2b3c: uploaded (4.1 MB in 0.8s, 5.1 MB/s)`: the bytes moved and their average speed."""
    if done and elapsed > 0:
        rate = format_size(done / elapsed)
        return f"{description}: {outcome} ({format_size(done)} in {elapsed:.1f}s, {rate}/s)"
    return f"{description}: {outcome} ({elapsed:.1f}s)"


class LogProgress:
    """One line per started and finished item, for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._items: dict[str, tuple[str, float, int]] = {}

    def log(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def start(self, key: str, description: str, total: int | None) -> None:
        self._items[key] = (description, time.monotonic(), 0)
        size = f" ({format_size(total)})" if total is not None else ""
        self.log(f"{description}{size}: started")

    def advance(self, key: str, amount: int) -> None:
        description, started, done = self._items[key]
        self._items[key] = (description, started, done + amount)

    def reset(self, key: str) -> None:
        description, started, _ = self._items[key]
        self._items[key] = (description, started, 0)

    def finish(self, key: str, outcome: str) -> None:
        description, started, done = self._items.pop(key)
        self.log(_outcome_line(description, outcome, time.monotonic() - started, done))


class RichProgress:
    """A live bar per item in flight on a terminal; each finished item leaves one plain line above the
    bars (its outcome, size, time and average speed; failures in red), and a closing count.

    Descriptions and outcomes are printed as text, never as rich markup: "[failed]" stays visible.
    """

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._console = console
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,  # finished items are printed as lines; the live area only shows work
        )
        self._tasks: dict[str, tuple[TaskID, str, float, int]] = {}
        self._finished = 0
        self._failed = 0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
        if self._failed:
            summary = f"{self._failed} of {self._finished} transfers failed"
            self._console.print(summary, style="red", markup=False, highlight=False)

    def log(self, message: str) -> None:
        self._console.print(message, markup=False, highlight=False, soft_wrap=True)

    def start(self, key: str, description: str, total: int | None) -> None:
        task = self._progress.add_task(description, total=total)
        self._tasks[key] = (task, description, time.monotonic(), 0)

    def advance(self, key: str, amount: int) -> None:
        task, description, started, done = self._tasks[key]
        self._tasks[key] = (task, description, started, done + amount)
        self._progress.advance(task, amount)

    def reset(self, key: str) -> None:
        task, description, started, _ = self._tasks[key]
        self._tasks[key] = (task, description, started, 0)
        self._progress.reset(task)

    def finish(self, key: str, outcome: str) -> None:
        task, description, started, done = self._tasks.pop(key)
        self._progress.remove_task(task)
        self._finished += 1
        failed = outcome == FAILED
        self._failed += failed
        line = _outcome_line(description, outcome, time.monotonic() - started, done)
        self._console.print(line, style="red" if failed else None, markup=False, highlight=False)


@contextmanager
def progress_reporter(stream: TextIO | None = None) -> Iterator[ProgressReporter]:
    """Rich progress if `stream` (default stderr) is a terminal, else plain log lines."""
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console

        with RichProgress(Console(file=stream)) as rich_progress:
            yield rich_progress
    else:
        yield LogProgress(stream)
