"""Running CPU-heavy functions in child processes from asyncio, at most N at a time.

One fresh process per call: a failing conversion can stop its siblings at once (terminate),
and a worker killed by the OS (e.g. out of memory) is reported instead of hanging the
conversion. Processes come from a fork server that has the conversion code imported already,
so starting one costs a fork, not an interpreter start-up; the fork server itself is
single-threaded, so forking it is safe whatever threads the caller runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from acceld.convert.errors import ConvertError
from acceld.convert.forkserver import CONTEXT, start_fork_server
from acceld.convert.slots import LargestFirst
from acceld.convert.worker_child import ERROR, PROGRESS, run_child

T = TypeVar("T")

_DIED = "died"  # the child ended without sending its outcome
# How much lower a job's CPU priority is than that of a larger job running beside it: the largest
# job decides when a conversion ends, and smaller ones can use what its threads leave idle.
_OUTRANKED_NICENESS = 10


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class ProcessRunner:
    """Runs calls in child processes, at most `limit` at once.

    With `preload`, a fork server not yet running imports only those modules (beyond the basics)
    instead of every driver's, and starts now: its interpreter start-up and imports then overlap
    the caller's reading of the source instead of delaying the first layer.
    """

    def __init__(self, limit: int | None = None, preload: Sequence[str] | None = None) -> None:
        self._slots = LargestFirst(limit or default_workers())
        if preload is not None:
            start_fork_server(preload)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        on_progress: Callable[[int], None] | None = None,
        size: int = 0,
    ) -> T:
        """`fn(*args)` in a child process; with `on_progress`, `fn(*args, report)` where each
        `report(n)` in the child calls `on_progress(n)` here. Of the calls waiting for a process,
        the largest `size` starts first; one started beside a larger one runs at a lower priority."""
        async with self._slots.hold(size) as outranked:
            receiver, sender = CONTEXT.Pipe(duplex=False)
            reports = on_progress is not None
            niceness = _OUTRANKED_NICENESS if outranked else 0
            child_args = (sender, fn, args, reports, niceness)
            process = CONTEXT.Process(target=run_child, args=child_args, daemon=True)
            process.start()
            sender.close()
            try:
                while True:
                    kind, value = await _receive(receiver)
                    if kind != PROGRESS:
                        break
                    if on_progress is not None:
                        on_progress(value)
            except BaseException:
                process.terminate()
                raise
            finally:
                await asyncio.to_thread(process.join)
                receiver.close()
        if kind == _DIED:
            raise _death(process.exitcode)
        if kind == ERROR:
            raise value
        return value  # type: ignore[no-any-return]


def _death(exitcode: int | None) -> ConvertError:
    """Why a worker ended without sending a result, from its exit status."""
    if exitcode is not None and exitcode < 0:
        cause = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else -exitcode
        return ConvertError(f"worker process was killed by signal {name}{cause}", transient=True)
    return ConvertError(f"worker process exited with status {exitcode} without a result (see its output)")


async def _receive(conn: Connection) -> tuple[str, Any]:
    """The child's next (kind, value) message; waits on the pipe without blocking the event loop."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    try:
        message: tuple[str, Any] = conn.recv()
    except EOFError:
        return _DIED, None
    return message
