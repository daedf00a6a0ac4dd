"""A limit on concurrent jobs that starts the largest waiting job first.

With more jobs than slots, the order they start in decides when the last one ends: a large layer
started behind small ones ends the conversion late while the other workers sit idle. For the same
reason a holder learns whether a larger job held a slot when it got its own (it may then leave
the CPU to that one first).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class LargestFirst:
    """At most `limit` holders at once; waiters are let in largest `size` first (equal sizes in
    arrival order). Callers arriving in the same turn of the event loop are ranked together."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._arrivals = itertools.count()
        self._dispatch_due = False
        self._held: list[int] = []  # the sizes of the current holders

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[bool]:
        """Hold a slot; yields whether a larger job held one when this one got it."""
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[bool] = loop.create_future()
        heapq.heappush(self._waiting, (-size, next(self._arrivals), granted))
        if not self._dispatch_due:
            self._dispatch_due = True
            loop.call_soon(self._dispatch)
        try:
            outranked = await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted just as it was cancelled
                self._release(size)
            raise
        try:
            yield outranked
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self._held.remove(size)
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        self._dispatch_due = False
        while self._free and self._waiting:
            negative_size, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # a cancelled waiter's future is done: skipped
                granted.set_result(any(held > -negative_size for held in self._held))
                self._held.append(-negative_size)
                self._free -= 1
