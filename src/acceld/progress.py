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
        elapsed = time.monotonic() - started
        rate = f", {format_size(done / elapsed)}/s" if done and elapsed > 0 else ""
        self.log(f"{description}: {outcome} in {elapsed:.1f}s{rate}")


class RichProgress:
    """A live bar per item on a terminal."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, tuple[TaskID, str, int | None]] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def log(self, message: str) -> None:
        self._progress.console.log(message)

    def start(self, key: str, description: str, total: int | None) -> None:
        self._tasks[key] = (self._progress.add_task(description, total=total), description, total)

    def advance(self, key: str, amount: int) -> None:
        self._progress.advance(self._tasks[key][0], amount)

    def reset(self, key: str) -> None:
        self._progress.reset(self._tasks[key][0])

    def finish(self, key: str, outcome: str) -> None:
        task, description, total = self._tasks.pop(key)
        self._progress.update(task, description=f"{description} [{outcome}]", completed=total)


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
