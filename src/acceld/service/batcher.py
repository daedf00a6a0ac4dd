"""Group commit for webhook intake: events that arrive while a commit runs share the next one.

Every caller still gets its answer only after its own tasks are committed; under load many
events share one transaction (one fsync) instead of queueing for the database one by one.
"""

from __future__ import annotations

import asyncio
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
            except Exception as exc:  # StoreError, or a bug: every waiting caller must hear of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
