"""Group commit for webhook intake: events that arrive while a commit runs share the next one.

Every caller still gets its answer only after its own tasks are committed; under load many
events share one transaction (one fsync) instead of queueing for the database one by one.
When a shared commit fails, each event is committed on its own, so only a failing one fails.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from acceld.service.store import Enqueued, NewTask, TaskStore

MAX_BATCH = 512


class EnqueueBatcher:
    def __init__(self, store: TaskStore, max_attempts: int) -> None:
        self._store = store
        self._max_attempts = max_attempts
        self._pending: list[tuple[Sequence[NewTask], asyncio.Future[list[Enqueued]]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def enqueue(self, new_tasks: Sequence[NewTask]) -> list[Enqueued]:
        """Commit `new_tasks` (with whatever else is waiting); raises StoreError when the commit fails."""
        if not new_tasks:
            return []
        future: asyncio.Future[list[Enqueued]] = asyncio.get_running_loop().create_future()
        self._pending.append((new_tasks, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await future

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = await asyncio.to_thread(
                    self._store.enqueue_groups, [tasks for tasks, _ in batch], self._max_attempts
                )
            except Exception as exc:  # StoreError, or a bug
                if len(batch) == 1:
                    _settle(batch[0][1], exception=exc)
                    continue
                # One event must not fail the others: each commits on its own now.
                for tasks, future in batch:
                    try:
                        _settle(
                            future, await asyncio.to_thread(self._store.enqueue, tasks, self._max_attempts)
                        )
                    except Exception as own:
                        _settle(future, exception=own)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                _settle(future, result)


def _settle(
    future: asyncio.Future[list[Enqueued]],
    result: list[Enqueued] | None = None,
    *,
    exception: BaseException | None = None,
) -> None:
    if future.done():  # the caller went away (its request was cancelled)
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        assert result is not None
        future.set_result(result)


class QueueDepth:
    """How many tasks are queued, read from the store at most once per `ttl` seconds (the intake asks
    on every event)."""

    def __init__(self, store: TaskStore, ttl: float = 1.0) -> None:
        self._store = store
        self._ttl = ttl
        self._value = 0
        self._read_at = -math.inf

    async def current(self) -> int:
        """Raises StoreError when the store cannot be read."""
        if time.monotonic() - self._read_at >= self._ttl:
            self._value = await asyncio.to_thread(self._store.queued_count)
            self._read_at = time.monotonic()
        return self._value
