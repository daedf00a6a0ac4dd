"""Blocking work (hashing, file writes) moved off the event loop but kept in order.

hashlib and file writes release the GIL, so a stream can receive its next chunk while the
previous one is hashed or written: on a busy machine this is what keeps transfers near the speed
of multi-threaded tools.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import BinaryIO


class BackgroundWorker:
    """Runs one call at a time in a thread, in submission order; `submit` waits for the previous call."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[object] | None = None

    async def submit(self, call: Callable[[], object]) -> None:
        await self.wait()
        self._pending = asyncio.get_running_loop().run_in_executor(None, call)

    async def wait(self) -> None:
        """Wait for the last call; its exception is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def drain(self) -> None:
        """Wait for the last call and ignore its outcome (clean-up after a failure)."""
        with contextlib.suppress(Exception):
            await self.wait()


COALESCE_SIZE = 1 << 20


class Coalescer:
    """Collects small network chunks into pieces of at least COALESCE_SIZE bytes."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> bytes | None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        return self.flush() if self._size >= COALESCE_SIZE else None

    def flush(self) -> bytes | None:
        if not self._size:
            return None
        data = b"".join(self._chunks)
        self._chunks, self._size = [], 0
        return data


async def read_ahead(f: BinaryIO, size: int) -> AsyncGenerator[bytes, None]:
    """Read `f` in `size` pieces in a worker thread, reading the next piece while the caller
    handles the current one. Takes ownership of `f`: closes it when done or closed itself
    (use `contextlib.aclosing` so that happens at once)."""
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, f.read, size)
    try:
        while chunk := await pending:
            pending = loop.run_in_executor(None, f.read, size)
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await pending
        f.close()
