"""Jobs that run once per interval across all replicas sharing the task database (reconcile, purge).

Every replica looks often; the one that holds the job's advisory lock and finds the job due (the
store moves its next run forward in the same statement) runs it. On SQLite (one process) both
checks always pass for this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from acceld.service.store import StoreError, TaskStore

log = logging.getLogger("acceld.service")
_MAX_CHECK_SECONDS = 60.0


async def run_periodically(
    store: TaskStore,
    name: str,
    interval: float,
    job: Callable[[], Awaitable[None]],
    *,
    first_delay: float,
) -> None:
    """Run `job` once per `interval` fleet-wide, the first time `first_delay` seconds from the first
    replica's start. Errors are logged; the next interval tries again."""
    first_run = time.time() + first_delay
    check = min(interval / 2, _MAX_CHECK_SECONDS)
    while True:
        try:
            await _run_if_due(store, name, interval, first_run, job)
        except StoreError as exc:
            log.warning("%s: task database unavailable: %s", name, exc)
        except Exception:  # the next round tries again; the service keeps serving
            log.exception("%s failed", name)
        await asyncio.sleep(check)


async def _run_if_due(
    store: TaskStore, name: str, interval: float, first_run: float, job: Callable[[], Awaitable[None]]
) -> None:
    lock = store.exclusive(name)
    mine = await asyncio.to_thread(lock.__enter__)
    try:
        if mine and await asyncio.to_thread(store.due, name, interval, first_run=first_run):
            await job()
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)
