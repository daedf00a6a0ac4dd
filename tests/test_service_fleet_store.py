"""The task store shared by replicas: periodic jobs once per interval, advisory locks, LISTEN/NOTIFY
wake-ups, the notification outbox written with a task's end (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import create_database, run_postgres
from test_service_units import new_task

from acceld.service.store import (
    OUTBOX_CHANNEL,
    TASKS_CHANNEL,
    OutboxEntry,
    Outcome,
    Task,
    TaskStore,
)
from acceld.service.wakeup import Listener


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with run_postgres() as url_template:
            yield url_template
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture
def pg_url(postgres: str) -> str:
    return create_database(postgres, f"t_{uuid.uuid4().hex}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def _due_in_process(url: str, now: float, out: multiprocessing.Queue[bool]) -> None:
    store = TaskStore.open(url)
    out.put(store.due("sync", 60, first_run=0, now=now))
    store.close()


def test_a_periodic_job_is_due_once_per_interval_across_processes(store_url: str) -> None:
    TaskStore.open(store_url).close()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    for now, expected in ((1000.0, 1), (1030.0, 0), (1061.0, 1)):
        processes = [context.Process(target=_due_in_process, args=(store_url, now, out)) for _ in range(3)]
        for process in processes:
            process.start()
        results = [out.get(timeout=120) for _ in processes]
        for process in processes:
            process.join()
        assert sum(results) == expected, (now, results)


def test_first_run_is_not_before_its_time(store_url: str) -> None:
    store = TaskStore.open(store_url)
    assert not store.due("sync", 60, first_run=500, now=100)
    assert store.due("sync", 60, first_run=500, now=500)
    assert not store.due("sync", 60, first_run=500, now=520)


def test_advisory_lock_has_one_holder(pg_url: str) -> None:
    one, two = TaskStore.open(pg_url), TaskStore.open(pg_url)
    with one.exclusive("sync") as first:
        with two.exclusive("sync") as second:
            assert first and not second
        with two.exclusive("purge") as other_job:
            assert other_job
    with two.exclusive("sync") as after_release:
        assert after_release
    one.close()
    two.close()


def test_sqlite_needs_no_lock(tmp_path: Path) -> None:
    store = TaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}")
    with store.exclusive("sync") as first, store.exclusive("sync") as second:
        assert first and second


async def test_listen_wakes_on_enqueue_and_on_outbox(pg_url: str) -> None:
    store = TaskStore.open(pg_url)
    store.outbox_entries = lambda task: [OutboxEntry("hook", "io.acceld.conversion.succeeded", "{}")]
    woken: dict[str, asyncio.Event] = {TASKS_CHANNEL: asyncio.Event(), OUTBOX_CHANNEL: asyncio.Event()}
    listener = Listener(store.engine.url, {name: event.set for name, event in woken.items()})
    listener.start()
    try:
        for _ in range(100):
            if listener.connected:
                break
            await asyncio.sleep(0.1)
        assert listener.connected
        await asyncio.sleep(0.2)
        for event in woken.values():  # the wake-up every (re)connection sends
            event.clear()
        other = TaskStore.open(pg_url)  # another replica queues a task
        await asyncio.to_thread(other.enqueue, [new_task()], 3)
        await asyncio.wait_for(woken[TASKS_CHANNEL].wait(), timeout=10)
        assert not woken[OUTBOX_CHANNEL].is_set()
        task = other.claim("b", 30)
        assert task is not None
        other.outbox_entries = store.outbox_entries
        assert other.complete(task.id, "b", Outcome(status="succeeded"))
        await asyncio.wait_for(woken[OUTBOX_CHANNEL].wait(), timeout=10)
        other.close()
    finally:
        await listener.stop()
        store.close()


def test_outbox_rows_commit_with_the_end_of_the_task(store_url: str) -> None:
    store = TaskStore.open(store_url)
    seen: list[Task] = []

    def entries(task: Task) -> list[OutboxEntry]:
        seen.append(task)
        return [OutboxEntry(name, f"io.acceld.conversion.{task.status}", task.id) for name in ("a", "b")]

    store.outbox_entries = entries
    ok, bad = store.enqueue([new_task(), new_task(tag="v2", driver="nydus")], max_attempts=3)
    first = store.claim("w", 30)
    second = store.claim("w", 30)
    assert first is not None and second is not None
    assert store.retry_later(second.id, "w", "transient", 0)  # not an end: nothing to send
    assert store.deliveries(None, 10, 0)[1] == 0
    assert store.complete(first.id, "w", Outcome(status="succeeded", target_digest="sha256:" + "1" * 64))
    assert not store.complete(first.id, "w", Outcome(status="succeeded"))  # not ours any more: no rows
    again = store.claim("w", 30)
    assert again is not None and store.fail(again.id, "w", "gave up")
    rows, total = store.deliveries(None, 10, 0)
    assert total == 4
    assert {(r.task_id, r.target, r.event_type) for r in rows} == {
        (ok.task_id, "a", "io.acceld.conversion.succeeded"),
        (ok.task_id, "b", "io.acceld.conversion.succeeded"),
        (bad.task_id, "a", "io.acceld.conversion.failed"),
        (bad.task_id, "b", "io.acceld.conversion.failed"),
    }
    assert seen[0].target_digest == "sha256:" + "1" * 64  # the row as the end left it
    assert store.deliveries(ok.task_id, 10, 0)[1] == 2


def test_deliveries_are_leased_retried_and_finished(store_url: str) -> None:
    store = TaskStore.open(store_url)
    store.outbox_entries = lambda task: [OutboxEntry("hook", "t", "{}")]
    store.enqueue([new_task()], 3)
    task = store.claim("w", 30)
    assert task is not None and store.complete(task.id, "w", Outcome(status="skipped"))
    delivery = store.claim_delivery("s1", 30, now=task.updated_at + 1)
    assert delivery is not None
    assert store.claim_delivery("s2", 30, now=task.updated_at + 2) is None  # leased
    stolen = store.claim_delivery("s2", 30, now=task.updated_at + 40)  # s1 died
    assert stolen is not None and stolen.id == delivery.id
    assert not store.delivered(delivery.id, "s1", 200)
    assert store.delivery_failed(delivery.id, "s2", "HTTP 500", 500, not_before=task.updated_at + 100)
    assert store.claim_delivery("s2", 30, now=task.updated_at + 50) is None  # backing off
    retried = store.claim_delivery("s3", 30, now=task.updated_at + 101)
    assert retried is not None and retried.attempts == 1
    assert store.delivered(retried.id, "s3", 204)
    (done,), _ = store.deliveries(task.id, 10, 0)
    assert done.status == "delivered" and done.attempts == 2 and done.response_status == 204
    assert store.claim_delivery("s4", 30, now=task.updated_at + 1000) is None
