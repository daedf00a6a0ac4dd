"""Running CPU-heavy functions in child processes from asyncio, at most N at a time.

One fresh (spawned) process per call: a failing conversion can stop its siblings at once
(terminate), and a worker killed by the OS (e.g. out of memory) is reported instead of
hanging the conversion.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from acceld.convert.errors import ConvertError
from acceld.errors import AcceldError

T = TypeVar("T")

_CONTEXT = multiprocessing.get_context("spawn")


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result: tuple[bool, Any] = (True, fn(*args))
    except AcceldError as exc:
        result = (False, exc)
    except BaseException as exc:
        result = (False, ConvertError(f"worker failed: {type(exc).__name__}: {exc}"))
    conn.send(result)
    conn.close()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class ProcessRunner:
    """Runs calls in child processes, at most `limit` at once."""

    def __init__(self, limit: int | None = None) -> None:
        self._slots = asyncio.Semaphore(limit or default_workers())

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            receiver, sender = _CONTEXT.Pipe(duplex=False)
            process = _CONTEXT.Process(target=_child, args=(sender, fn, args), daemon=True)
            process.start()
            sender.close()
            try:
                ok, value = await _receive(receiver)
            except BaseException:
                process.terminate()
                raise
            finally:
                await asyncio.to_thread(process.join)
                receiver.close()
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


async def _receive(conn: Connection) -> tuple[bool, Any]:
    """The child's (ok, value) message; waits on the pipe without blocking the event loop."""
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
        result: tuple[bool, Any] = conn.recv()
    except EOFError:
        return False, ConvertError("worker process died (killed by the system, out of memory?)")
    return result
