"""Intake under abuse: oversized events, a failing event in a shared group commit, a full queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from harness.registry import RunningRegistry
from service_helpers import (
    WEBHOOK_SECRET,
    ServiceProcess,
    default_payload,
    post_event,
    resource,
    run_service,
    service_config,
    tasks_of,
    write_config,
)
from sqlalchemy import event

from acceld.service.batcher import EnqueueBatcher
from acceld.service.store import NewTask, TaskStore, open_engine

TWO_DRIVERS = [{"name": "all", "drivers": [{"name": "estargz"}, {"name": "zstdchunked"}]}]


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


@contextmanager
def intake_service(
    tmp_path: Path, registry: RunningRegistry, webhook: dict[str, Any], **extra: Any
) -> Iterator[ServiceProcess]:
    """An intake-only service (no workers: what is queued stays queued)."""
    config = service_config(
        tmp_path / "data",
        {registry.host: {"plain_http": True}},
        workers={"concurrency": 0},
        rules=TWO_DRIVERS,
        **extra,
    )
    config["webhook"].update(webhook)
    with run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service:
        yield service


def oversized_body(host: str, repository: str, resources: int) -> bytes:
    """A compact Default payload naming `resources` tags (two tasks each under TWO_DRIVERS)."""
    listed = ",".join(f'{{"resource_url":"{host}/{repository}:t{n}"}}' for n in range(resources))
    return f'{{"type":"PUSH_ARTIFACT","operator":"x","event_data":{{"resources":[{listed}]}}}}'.encode()


def post_body(url: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Authorization": WEBHOOK_SECRET}
    return httpx.post(f"{url}/api/v1/conversions", content=body, headers=headers, timeout=120)


def post_concurrently(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post_body(url, body), bodies))


def test_oversized_events_do_not_fail_a_valid_one(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    """Without a cap on resources: two events of 8,000 tasks each and a valid event, sent at once,
    are all committed."""
    host = registry_plain.host
    valid = json.dumps(
        default_payload("PUSH_ARTIFACT", [resource(host, "valid/app", digest(1), "v1")])
    ).encode()
    bodies = [oversized_body(host, "big/one", 4_000), oversized_body(host, "big/two", 4_000), valid]
    webhook = {"max_resources_per_event": 100_000}
    with intake_service(
        tmp_path, registry_plain, webhook, server={"port": 0, "max_body_bytes": 2 << 20}
    ) as svc:
        replies = post_concurrently(svc.url, bodies)
        assert [r.status_code for r in replies] == [202, 202, 202], [r.text[:200] for r in replies]
        assert [len(r.json()["tasks"]) for r in replies] == [8_000, 8_000, 2]
        with svc.api() as api:
            assert len(tasks_of(api, repository="valid/app")) == 2


def test_events_with_too_many_resources_are_refused(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    host = registry_plain.host
    valid = json.dumps(
        default_payload("PUSH_ARTIFACT", [resource(host, "valid/app", digest(2), "v1")])
    ).encode()
    bodies = [oversized_body(host, "big/one", 20_000), oversized_body(host, "big/two", 101), valid]
    with intake_service(tmp_path, registry_plain, {}) as svc:  # the default cap: 100
        replies = post_concurrently(svc.url, bodies)
        assert [r.status_code for r in replies] == [413, 413, 202], [r.text[:200] for r in replies]
        assert "webhook.max_resources_per_event (100)" in replies[1].json()["message"]
        with svc.api() as api:
            assert {t["repository"] for t in tasks_of(api)} == {"valid/app"}


def test_full_queue_answers_429_with_retry_after(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    host = registry_plain.host
    webhook = {"max_queued_tasks": 4, "retry_after_seconds": 7}
    with intake_service(tmp_path, registry_plain, webhook) as svc:
        replies = []
        for n in range(40):  # two tasks per event; the depth is re-read at most once a second
            event = default_payload("PUSH_ARTIFACT", [resource(host, "lib/app", digest(100 + n), f"v{n}")])
            replies.append(post_event(svc.url, event))
            if replies[-1].status_code != 202:
                break
            asyncio.run(asyncio.sleep(0.3))
        full = replies[-1]
        assert full.status_code == 429, [r.status_code for r in replies]
        assert full.headers["retry-after"] == "7"
        assert full.json()["code"] == "ERR_TOO_MANY_REQUESTS" and "max_queued_tasks" in full.json()["message"]
        with svc.api() as api:
            queued = len(tasks_of(api, status="queued"))
        assert 4 <= queued <= 4 + 2 * 4  # at most the events of one stale second beyond the limit
        # An event that queues nothing is still acknowledged.
        pulled = default_payload("PULL_ARTIFACT", [resource(host, "lib/app", digest(1), "v1")])
        assert post_event(svc.url, pulled).status_code == 200


def test_large_groups_fit_any_sqlite_parameter_limit(tmp_path: Path) -> None:
    """SQLite builds before 3.32 bind at most 999 parameters per statement: thousands of tasks in
    one commit still go in."""
    store = TaskStore(open_engine(f"sqlite:///{tmp_path / 'tasks.db'}"))

    @event.listens_for(store.engine, "connect")
    def _old_limit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    try:
        store.create_schema()
        first = store.enqueue_groups(
            [[_task(n) for n in range(1500)], [_task(n) for n in range(1000, 2500)]], 3
        )
        assert [sum(e.created for e in group) for group in first] == [1500, 1000]
        again = store.enqueue([_task(n) for n in range(2500)], 3)
        assert not any(e.created for e in again) and store.queued_count() == 2500
    finally:
        store.close()


def _task(n: int, options: dict[str, Any] | None = None) -> NewTask:
    return NewTask("convert", "r", "h.test", "a/b", f"v{n}", digest(n), "estargz", options or {}, (), "")


async def test_a_failing_event_does_not_fail_its_group_commit(tmp_path: Path) -> None:
    store = TaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}")
    try:
        batcher = EnqueueBatcher(store, 3)
        unstorable = _task(2, {"not json": object()})
        results = await asyncio.gather(
            batcher.enqueue([_task(1)]),
            batcher.enqueue([unstorable]),
            batcher.enqueue([_task(3), _task(4)]),
            return_exceptions=True,
        )
        assert isinstance(results[1], TypeError), results
        assert [len(r) for r in (results[0], results[2]) if isinstance(r, list)] == [1, 2]
        assert store.queued_count() == 3
    finally:
        store.close()
