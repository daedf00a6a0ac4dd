"""Service building blocks on their own: payload parsing, rules, config, the SQLite task store (leases,
claims from many threads and processes, dedup), intake planning, and the worker pool with real job
processes that crash."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import create_database, run_postgres

from acceld.config import ConfigError
from acceld.service.config import ServiceConfig, WorkerSettings, load_service_config
from acceld.service.harbor import PayloadError, parse_event
from acceld.service.intake import plan_event
from acceld.service.metrics import ServiceMetrics
from acceld.service.rules import RuleSet, compile_pattern
from acceld.service.store import NewTask, Outcome, TaskFilter, TaskStore
from acceld.service.workers import WorkerPool, backoff_delay

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def new_task(digest: str = DIGEST, driver: str = "estargz", tag: str | None = "v1") -> NewTask:
    return NewTask(
        kind="convert",
        rule="r",
        registry="h.test",
        repository="lib/app",
        tag=tag,
        source_digest=digest,
        driver=driver,
        options={},
        platforms=(),
        options_key=driver,
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with run_postgres() as url_template:
            yield url_template
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on SQLite and on PostgreSQL (a fresh database each)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    template: str = request.getfixturevalue("postgres")
    return create_database(template, f"t_{uuid.uuid4().hex}")


@pytest.fixture
def store(store_url: str) -> Iterator[TaskStore]:
    opened = TaskStore.open(store_url)
    yield opened
    opened.close()


# -- payloads ----------------------------------------------------------------------------------


def test_default_and_cloudevents_payloads_parse_alike() -> None:
    data = {
        "resources": [
            {
                "digest": DIGEST,
                "tag": "latest",
                "resource_url": "Hub.Harbor.com/test-webhook/debian:latest",
                "scan_overview": {},
            }
        ],
        "repository": {"name": "debian", "namespace": "test-webhook"},
        "unknown": [1],
    }
    default = parse_event(
        json.dumps(
            {"type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "admin", "event_data": data, "extra": True}
        ).encode(),
        "application/json",
    )
    cloud = parse_event(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "x-1",
                "type": "harbor.artifact.pushed",
                "source": "/projects/7/webhook/policies/3",
                "operator": "admin",
                "data": data,
            }
        ).encode(),
        "application/cloudevents+json; charset=utf-8",
    )
    assert default.type == cloud.type == "PUSH_ARTIFACT"
    assert default.artifacts == cloud.artifacts
    (artifact,) = default.artifacts
    assert (artifact.registry, artifact.repository, artifact.tag, artifact.digest) == (
        "hub.harbor.com",
        "test-webhook/debian",
        "latest",
        DIGEST,
    )
    assert cloud.delivery_id == "x-1" and default.delivery_id is None


def test_digest_only_resource_has_no_tag() -> None:
    event = parse_event(
        json.dumps(
            {
                "type": "PUSH_ARTIFACT",
                "operator": "harbor-jobservice",
                "event_data": {
                    "resources": [
                        {
                            "digest": DIGEST,
                            "tag": DIGEST,
                            "resource_url": f"localhost:8080/harbor/a/b@{DIGEST}",
                        }
                    ]
                },
            }
        ).encode(),
        "application/json",
    )
    (artifact,) = event.artifacts
    assert artifact.tag is None and artifact.digest == DIGEST and artifact.repository == "harbor/a/b"
    assert artifact.registry == "localhost:8080" and artifact.project == "harbor"


def test_events_without_resources_or_operator_are_valid() -> None:
    quota = parse_event(
        b'{"type":"QUOTA_EXCEED","operator":"","event_data":{"resources":[{"digest":"x"}]}}',
        "application/json",
    )
    assert quota.artifacts == () and quota.operator == ""
    assert parse_event(b'{"type":"PUSH_ARTIFACT"}', "application/json").artifacts == ()
    replication = parse_event(
        b'{"specversion":"1.0","type":"harbor.replication.status.changed","data":{}}', "application/json"
    )
    assert replication.type == "REPLICATION"


@pytest.mark.parametrize("url", ["h.test/a:v1@" + DIGEST, "https://h.test/a/b:v1"])
def test_accepted_resource_url_forms(url: str) -> None:
    body = json.dumps(
        {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": url}]}}
    ).encode()
    (artifact,) = parse_event(body, "application/json").artifacts
    assert artifact.registry == "h.test"


@pytest.mark.parametrize(
    "url",
    [
        "h.test/a/b:v1\n",  # `$` would match before a trailing newline
        "h.test/a/b:v\u00e9",  # Unicode letters are `\\w` but not in the tag grammar
        "h.test/a/b:\u0661",  # a Unicode digit
        "h.test/a/\u00e9:v1",
        "h.test/a/b\n:v1",
        "h.test\n/a/b:v1",
        "h.test/" + "a" * 256 + ":v1",  # longer than the 255 characters a repository name may have
        "h.test/a/b:" + "v" * 129,
        "h.test/a/b@sha256:" + "ab" * 32 + "\n",
    ],
)
def test_resource_urls_outside_the_distribution_grammar_are_rejected(url: str) -> None:
    body = json.dumps({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": url}]}})
    with pytest.raises(PayloadError):
        parse_event(body.encode(), "application/json")


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_bodies_are_payload_errors(depth: int) -> None:
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse_event(b"[" * depth + b"]" * depth, "application/json")


def test_digest_disagreeing_with_the_url_is_rejected() -> None:
    body = json.dumps(
        {
            "type": "PUSH_ARTIFACT",
            "event_data": {"resources": [{"digest": DIGEST, "resource_url": f"h.test/a@{OTHER_DIGEST}"}]},
        }
    ).encode()
    with pytest.raises(PayloadError, match="differs"):
        parse_event(body, "application/json")


# -- rules -------------------------------------------------------------------------------------


def test_glob_and_regex_patterns() -> None:
    assert compile_pattern("library/*").fullmatch("library/app")
    assert not compile_pattern("library/*").fullmatch("library/a/b")
    assert compile_pattern("library/**").fullmatch("library/a/b")
    assert compile_pattern("v?.*").fullmatch("v1.2")
    assert compile_pattern("re:^release-[0-9]+$").fullmatch("release-42")
    assert not compile_pattern("a.b").fullmatch("axb")


def test_first_matching_rule_decides(tmp_path: Path) -> None:
    config = ServiceConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "rules": [
                {
                    "name": "team",
                    "projects": ["team"],
                    "tags": ["re:^v[0-9]+$"],
                    "untagged": False,
                    "drivers": [{"name": "estargz"}, {"name": "zstdchunked"}],
                },
                {
                    "name": "rest",
                    "repositories": ["**"],
                    "events": ["PUSH_ARTIFACT", "PULL_ARTIFACT"],
                    "platforms": ["linux/arm64", "linux/amd64"],
                    "drivers": [{"name": "estargz"}],
                },
            ],
        }
    )
    rules = RuleSet(config.rules)
    event = parse_event(
        json.dumps(
            {
                "type": "PUSH_ARTIFACT",
                "event_data": {
                    "resources": [
                        {"resource_url": "h.test/team/app:v2"},
                        {"resource_url": "h.test/team/app:dev"},
                        {"resource_url": f"h.test/team/app@{DIGEST}"},
                        {"resource_url": "h.test/other/app:v2"},
                    ]
                },
            }
        ).encode(),
        "application/json",
    )
    matched = [rules.match("PUSH_ARTIFACT", a) for a in event.artifacts]
    assert [r.name if r else None for r in matched] == ["team", "rest", "rest", "rest"]
    team = matched[0]
    assert team is not None and [c.driver for c in team.conversions] == ["estargz", "zstdchunked"]
    rest = matched[1]
    assert rest is not None and rest.conversions[0].platforms == ("linux/amd64", "linux/arm64")
    assert rest.conversions[0].options_key.endswith("platforms=linux/amd64,linux/arm64")
    assert rules.match("SCANNING_COMPLETED", event.artifacts[0]) is None
    suffixes = {c.tag_suffix for r in rules.rules for c in r.conversions}
    assert all(rules.is_converted_tag(f"v1{s}") for s in suffixes)
    assert rules.is_converted_tag("sha256-" + "ab" * 32) and not rules.is_converted_tag("v1")


def test_options_that_shape_only_the_image_keep_conversions_apart(tmp_path: Path) -> None:
    """SOCI v1 and v2 (and another layer threshold) share every zTOC but are separate results."""
    drivers = [
        {"name": "soci", "options": {"soci_version": "v1"}},
        {"name": "soci"},
        {"name": "soci", "options": {"min_layer_size": "1M"}},
    ]
    config = ServiceConfig.model_validate(
        {"data_dir": str(tmp_path), "rules": [{"name": "all", "drivers": drivers}]}
    )
    (rule,) = RuleSet(config.rules).rules
    assert len({c.options_key for c in rule.conversions}) == 3


def test_intake_plan() -> None:
    config = ServiceConfig.model_validate(
        {"rules": [{"name": "r", "drivers": [{"name": "estargz"}], "delete_converted": True}]}
    )
    rules = RuleSet(config.rules)
    push = parse_event(
        json.dumps(
            {
                "type": "PUSH_ARTIFACT",
                "operator": "admin",
                "event_data": {
                    "resources": [
                        {"digest": DIGEST, "resource_url": "h.test/a/b:v1"},
                        {"digest": OTHER_DIGEST, "resource_url": f"h.test/a/b@{OTHER_DIGEST}"},
                    ]
                },
            }
        ).encode(),
        "application/json",
    )
    plan = plan_event(push, rules, {"robot$acceld"}, child_grace_seconds=30, now=1000.0)
    assert [(t.tag, t.not_before) for t in plan.tasks] == [("v1", 1000.0), (None, 1030.0)]
    own = plan_event(push.__class__(push.type, "robot$acceld", push.artifacts), rules, {"robot$acceld"}, 30)
    assert own.tasks == [] and len(own.ignored) == 2
    deletion = plan_event(push.__class__("DELETE_ARTIFACT", "admin", push.artifacts[:1]), rules, set(), 30)
    assert [t.kind for t in deletion.tasks] == ["delete"] and len(deletion.deleted_sources) == 1


# -- config ------------------------------------------------------------------------------------


def test_defaults_without_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELD_DATA_DIR", str(tmp_path / "state"))
    config = load_service_config(None)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 2077)
    assert config.database_url() == f"sqlite:///{tmp_path / 'state' / 'acceld.db'}"
    token = config.api_token()
    token_file = tmp_path / "state" / "api-token"
    assert token_file.read_text().strip() == token and len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert load_service_config(None).api_token() == token  # stable across starts
    assert [r.name for r in config.rules] == ["default"]


def test_secrets_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hook").write_text("Bearer from-file\n")
    monkeypatch.setenv("API_TOKEN_ENV", "from-env")
    path = tmp_path / "acceld.yml"
    path.write_text(f"""
api: {{token_env: API_TOKEN_ENV}}
webhook:
  sources:
    h.test: {{auth_header_file: {tmp_path / "hook"}}}
    no-secret.test: {{}}
""")
    config = load_service_config(path)
    assert config.api_token() == "from-env"
    assert config.webhook_secrets() == {"h.test": "Bearer from-file"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server: {port: 99999}", "server.port"),
        ("nonsense: 1", "nonsense"),
        ("rules: [{name: a, drivers: []}]", "drivers"),
        ("rules: [{name: a, tags: ['re:(('], drivers: [{name: estargz}]}]", "regular expression"),
        ("rules: [{name: a, registries: [x.test], drivers: [{name: estargz}]}]", "webhook source"),
        ("api: {token: a, token_env: B}", None),
        ("[1, 2]", "mapping"),
        ("a: [", "YAML"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path: Path, text: str, message: str | None) -> None:
    path = tmp_path / "acceld.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_service_config(path).api_token()
    assert "\n" not in str(error.value)
    if message:
        assert message in str(error.value)


# -- store -------------------------------------------------------------------------------------


def test_dedup_counts_every_event(store: TaskStore) -> None:
    first = store.enqueue([new_task(), new_task(), new_task(driver="nydus")], max_attempts=3)
    assert [e.created for e in first] == [True, False, True]
    assert first[0].task_id == first[1].task_id != first[2].task_id
    groups = store.enqueue_groups([[new_task()], [new_task(), new_task(tag=None)]], max_attempts=3)
    assert all(not e.created for group in groups for e in group)
    task = store.get(first[0].task_id)
    assert task is not None and task.events == 5


def test_claims_are_exclusive_across_threads(store: TaskStore) -> None:
    digests = [f"sha256:{n:064x}" for n in range(40)]
    store.enqueue([new_task(d) for d in digests], max_attempts=3)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(owner: str) -> None:
        while (task := store.claim(owner, lease_seconds=60)) is not None:
            with lock:
                claimed.append(task.id)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 40


def _claim_all(url: str, owner: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    other = TaskStore.open(url)
    ids = []
    while (task := other.claim(owner, lease_seconds=60)) is not None:
        ids.append(task.id)
    out.put(ids)


def test_claims_are_exclusive_across_processes(store_url: str) -> None:
    url = store_url
    TaskStore.open(url).enqueue([new_task(f"sha256:{n:064x}") for n in range(60)], max_attempts=3)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    processes = [context.Process(target=_claim_all, args=(url, f"p{n}", out)) for n in range(3)]
    for process in processes:
        process.start()
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    claimed = [i for ids in results for i in ids]
    assert len(claimed) == len(set(claimed)) == 60


def test_lease_expiry_heartbeat_and_cancel(store: TaskStore) -> None:
    (entry,) = store.enqueue([new_task()], max_attempts=3)
    now = time.time()
    task = store.claim("a", lease_seconds=10, now=now)
    assert task is not None and task.attempts == 1 and task.status == "running"
    assert store.claim("b", lease_seconds=10, now=now + 5) is None  # leased
    again = store.claim("b", lease_seconds=10, now=now + 11)  # the lease expired: its owner died
    assert again is not None and again.id == entry.task_id and again.attempts == 2
    assert not store.heartbeat(entry.task_id, "a", 10)  # "a" lost it
    assert not store.complete(entry.task_id, "a", Outcome(status="succeeded"))
    assert store.heartbeat(entry.task_id, "b", 10)
    assert store.cancel(entry.task_id) is not None
    assert not store.heartbeat(entry.task_id, "b", 10)  # the worker sees the cancellation
    cancelled = store.get(entry.task_id)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_retry_later_requeue_and_release(store: TaskStore) -> None:
    (entry,) = store.enqueue([new_task()], max_attempts=3)
    task = store.claim("a", 10)
    assert task is not None
    assert store.retry_later(task.id, "a", "503", not_before=time.time() + 100)
    assert store.claim("a", 10) is None  # not due yet
    later = store.claim("a", 10, now=time.time() + 101)
    assert later is not None and later.attempts == 2 and later.error == "503"
    assert store.requeue(later.id, "a")
    requeued = store.get(later.id)
    assert requeued is not None and requeued.status == "queued" and requeued.attempts == 1
    task = store.claim("a", 10, now=time.time() + 101)
    assert task is not None
    assert store.complete(task.id, "a", Outcome(status="succeeded", target="t", target_digest=OTHER_DIGEST))
    assert store.result_digests("h.test", "lib/app", DIGEST, "estargz") == [OTHER_DIGEST]
    released = store.release_source("h.test", "lib/app", DIGEST)
    assert [t.id for t in released] == [entry.task_id]
    (fresh,) = store.enqueue([new_task()], max_attempts=3)
    assert fresh.created and fresh.task_id != entry.task_id
    assert store.list_tasks(TaskFilter(repository="lib/app"), 10, 0)[1] == 2


# -- worker pool with real job processes -------------------------------------------------------------


async def test_crashing_job_processes_are_retried_then_fail(store: TaskStore) -> None:
    settings = WorkerSettings(concurrency=1, max_attempts=3, backoff_initial=0.05, poll_seconds=0.05)
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    pool = WorkerPool(store, settings, {}, ServiceMetrics(store.counts_by_status), job_command=lambda: crash)
    (entry,) = store.enqueue([new_task()], max_attempts=3)
    pool.start()
    try:
        for _ in range(600):
            task = store.get(entry.task_id)
            assert task is not None
            if task.status == "failed":
                break
            await asyncio.sleep(0.05)
    finally:
        await pool.stop(grace=5)
    assert task.status == "failed" and task.attempts == 3
    assert task.error == "gave up after 3 attempts: conversion process killed by signal 9"


async def test_shutdown_requeues_running_work(store: TaskStore) -> None:
    settings = WorkerSettings(concurrency=2, poll_seconds=0.05)
    hang = [sys.executable, "-c", "import time; time.sleep(600)"]
    pool = WorkerPool(store, settings, {}, ServiceMetrics(store.counts_by_status), job_command=lambda: hang)
    entries = store.enqueue([new_task(), new_task(OTHER_DIGEST)], max_attempts=3)
    pool.start()
    for _ in range(200):
        if store.counts_by_status()["running"] == 2:
            break
        await asyncio.sleep(0.05)
    await pool.stop(grace=0.2)
    for entry in entries:
        task = store.get(entry.task_id)
        assert task is not None and (task.status, task.attempts, task.lease_owner) == ("queued", 0, None)


def test_backoff_grows_to_its_cap() -> None:
    settings = WorkerSettings(backoff_initial=2, backoff_max=30)
    delays = [backoff_delay(settings, n) for n in range(1, 8)]
    assert 1.8 <= delays[0] <= 2.2 and 3.6 <= delays[1] <= 4.4
    assert max(delays) <= 33 and delays[-1] >= 27


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = TaskStore.open(f"sqlite:///{tmp_path / 'tasks.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert os.path.exists(str(store.engine.url.database) + "-wal")


def test_recent_tags_newest_first(store: TaskStore) -> None:
    store.enqueue([new_task(DIGEST, tag="v1")], max_attempts=3, now=100.0)
    store.enqueue(
        [new_task(OTHER_DIGEST, tag="v2"), new_task(OTHER_DIGEST, tag=None, driver="nydus")], 3, now=200.0
    )
    store.enqueue([new_task("sha256:" + "ef" * 32, tag="v1")], max_attempts=3, now=300.0)
    assert store.recent_tags("h.test", "lib/app") == ["v1", "v2"]
    assert store.recent_tags("h.test", "lib/other") == []


def test_purge_deletes_only_old_finished_tasks(store: TaskStore) -> None:
    entries = store.enqueue([new_task(f"sha256:{n:064x}") for n in range(3)], max_attempts=3)
    for _ in range(2):
        task = store.claim("a", 10)
        assert task is not None and store.complete(task.id, "a", Outcome(status="succeeded"))
    finished_at = max(t.finished_at or 0 for t in store.list_tasks(TaskFilter(status="succeeded"), 10, 0)[0])
    assert store.purge_finished(before=finished_at - 1) == 0
    assert store.purge_finished(before=finished_at + 1) == 2
    remaining = store.list_tasks(TaskFilter(), 10, 0)[0]
    assert [t.status for t in remaining] == ["queued"] and remaining[0].id in {e.task_id for e in entries}
