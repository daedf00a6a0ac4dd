"""Three real `acceld serve` replicas sharing one real PostgreSQL (nothing else shared): duplicate
events sent to different replicas convert once, kill -9 of the replica running a conversion hands the
task to another after its lease, a cancel on one replica stops the job on another, three syncs at
once queue each missing tag once, and every finished task is notified exactly once."""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.clients import skopeo_copy
from harness.registry import RunningRegistry
from harness.testimages import ImageSet
from service_helpers import (
    NotificationReceiver,
    ServiceProcess,
    acceld_command,
    create_database,
    default_payload,
    post_event,
    resource,
    run_notification_receiver,
    run_postgres,
    run_service,
    service_config,
    tasks_of,
    wait_finished,
    wait_for,
    write_config,
)
from test_service_convert import assert_estargz_of, children, get_manifest, running
from test_service_notifications import HOOK_SECRET, accepted_by_task

from acceld.convert.api import make_driver

SUFFIX = make_driver("estargz", {}).tag_suffix
REPLICAS = 3


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    try:
        with run_postgres() as url_template:
            yield url_template
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[NotificationReceiver]:
    with run_notification_receiver() as running_receiver:
        yield running_receiver


def replica_config(data: Path, registry: RunningRegistry, database: str, hook: str) -> dict[str, Any]:
    return service_config(
        data,
        {registry.host: {"plain_http": True}},
        database={"url": database},
        workers={"lease_seconds": 3, "poll_seconds": 2},
        notifications={
            "source": "/acceld/test",
            "targets": [{"name": "hook", "url": hook, "secret": HOOK_SECRET}],
            "backoff_initial": 0.3,
        },
    )


@pytest.fixture
def fleet(
    postgres: str, registry_plain: RunningRegistry, receiver: NotificationReceiver, tmp_path: Path
) -> Iterator[list[ServiceProcess]]:
    """Three replicas, each with its own data directory (and layer cache), on one new database."""
    database = create_database(postgres, f"fleet_{uuid.uuid4().hex}")
    with ExitStack() as stack:
        replicas = []
        for n in range(REPLICAS):
            config = replica_config(tmp_path / f"data-{n}", registry_plain, database, receiver.url)
            config_file = write_config(tmp_path / f"acceld-{n}.yml", config)
            replicas.append(stack.enter_context(run_service(config_file, tmp_path / f"serve-{n}.log")))
        for replica in replicas:
            ready = httpx.get(f"{replica.url}/readyz").json()
            assert ready == {"status": "ok", "detail": None, "database": "postgresql"}
        yield replicas


def attempts_logged(replicas: list[ServiceProcess], task_id: str) -> list[int]:
    """Per replica, how many attempts of `task_id` it started."""
    pattern = re.compile(rf"task {task_id}: attempt \d+ of ")
    return [len(pattern.findall(replica.log_text())) for replica in replicas]


def test_duplicate_events_across_replicas_convert_each_artifact_once(
    fleet: list[ServiceProcess],
    registry_plain: RunningRegistry,
    receiver: NotificationReceiver,
    test_images: ImageSet,
) -> None:
    image = test_images.edge
    repositories = [f"library/fleet-{n}" for n in range(10)]
    for repository in repositories:  # the same layers: cheap to push and to convert (layer cache)
        skopeo_copy(
            image.ref, f"docker://{registry_plain.host}/{repository}:v1", dest_registry=registry_plain
        )
    events = [
        (fleet[(copy + n) % REPLICAS], repository)  # each artifact's copies go to different replicas
        for copy in range(5)
        for n, repository in enumerate(repositories)
    ]
    assert len(events) == 50

    def send(event: tuple[ServiceProcess, str]) -> httpx.Response:
        replica, repository = event
        res = [resource(registry_plain.host, repository, image.digest, "v1")]
        return post_event(replica.url, default_payload("PUSH_ARTIFACT", res))

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(send, events))
    assert all(reply.status_code == 202 for reply in replies)
    task_ids = {reply.json()["tasks"][0]["id"] for reply in replies}
    assert len(task_ids) == 10  # one task per artifact fleet-wide
    with fleet[0].api() as api:
        tasks = [wait_finished(api, task_id, timeout=600) for task_id in task_ids]
    for task in tasks:
        assert (task["status"], task["attempts"], task["events"]) == ("succeeded", 1, 5), task
        assert_estargz_of(
            get_manifest(registry_plain, task["repository"], f"v1{SUFFIX}").json(), image.descriptor()
        )
        assert sum(attempts_logged(fleet, task["id"])) == 1
    wait_for(lambda: task_ids <= set(accepted_by_task_ids(receiver)), what="every notification")
    notified = accepted_by_task(receiver)
    assert all(len(notified[task_id]) == 1 for task_id in task_ids)


def accepted_by_task_ids(receiver: NotificationReceiver) -> list[str]:
    return list(accepted_by_task(receiver))


def test_kill_9_of_the_running_replica_hands_the_task_over(
    fleet: list[ServiceProcess],
    registry_plain: RunningRegistry,
    receiver: NotificationReceiver,
    test_images: ImageSet,
) -> None:
    image = test_images.edge
    skopeo_copy(
        image.ref, f"docker://{registry_plain.host}/library/fleet-kill:v1", dest_registry=registry_plain
    )
    res = [resource(registry_plain.host, "library/fleet-kill", image.digest, "v1")]
    task_id = post_event(fleet[0].url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]

    def runner() -> ServiceProcess | None:
        return next((r for r in fleet if r.process.poll() is None and children(r.process.pid)), None)

    victim = wait_for(runner, what="the replica running the conversion")
    victim.kill()
    survivor = next(r for r in fleet if r is not victim)
    with survivor.api() as api:
        task = wait_finished(api, task_id, timeout=300)
    assert (task["status"], task["attempts"]) == ("succeeded", 2), task
    assert attempts_logged([victim], task_id) == [1]
    assert sum(attempts_logged([r for r in fleet if r is not victim], task_id)) == 1
    assert_estargz_of(
        get_manifest(registry_plain, "library/fleet-kill", f"v1{SUFFIX}").json(), image.descriptor()
    )
    wait_for(lambda: task_id in accepted_by_task(receiver), what="the notification")
    assert len(accepted_by_task(receiver)[task_id]) == 1


def test_cancel_on_one_replica_stops_the_job_on_another(
    fleet: list[ServiceProcess], registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    image = test_images.edge
    skopeo_copy(
        image.ref, f"docker://{registry_plain.host}/library/fleet-cancel:v1", dest_registry=registry_plain
    )
    res = [resource(registry_plain.host, "library/fleet-cancel", image.digest, "v1")]
    task_id = post_event(fleet[0].url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]

    def runner() -> tuple[ServiceProcess, list[int]] | None:
        for replica in fleet:
            jobs = children(replica.process.pid)
            if jobs:
                return replica, jobs
        return None

    owner, jobs = wait_for(runner, what="the replica running the conversion")
    other = next(r for r in fleet if r is not owner)
    with other.api() as api:
        assert api.post(f"/api/v1/tasks/{task_id}/cancel").json()["status"] == "cancelled"
        wait_for(lambda: not any(running(pid) for pid in jobs), timeout=30, what="the job to stop")
        task = api.get(f"/api/v1/tasks/{task_id}").json()
    assert (task["status"], task["error"]) == ("cancelled", "cancelled by request")
    wait_for(lambda: "cancelled or taken over" in owner.log_text(), timeout=30, what="the owner to notice")


def test_three_syncs_at_once_queue_each_missing_tag_once(
    fleet: list[ServiceProcess],
    registry_plain: RunningRegistry,
    test_images: ImageSet,
    tmp_path: Path,
) -> None:
    image = test_images.edge
    tags = [f"t{n}" for n in range(5)]
    for tag in tags:  # pushed without webhooks
        skopeo_copy(
            image.ref,
            f"docker://{registry_plain.host}/library/fleet-sync:{tag}",
            dest_registry=registry_plain,
        )
    database = re.search(r"url: (\S+)", (tmp_path / "acceld-0.yml").read_text())
    assert database is not None
    syncs = []
    for n in range(REPLICAS):
        config = service_config(
            tmp_path / f"data-{n}",
            {registry_plain.host: {"plain_http": True}},
            database={"url": database.group(1)},
            rules=[
                {"name": "sync", "repositories": ["library/fleet-sync"], "drivers": [{"name": "estargz"}]}
            ],
        )
        config_file = write_config(tmp_path / f"sync-{n}.yml", config)
        syncs.append(
            subprocess.Popen(
                acceld_command("sync", "--config", str(config_file)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [sync.communicate(timeout=300)[0] for sync in syncs]
    assert all(sync.returncode == 0 for sync in syncs), outputs
    queued = [int(re.search(r"queued: (\d+)", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(queued) == len(tags), outputs
    with fleet[1].api() as api:
        tasks = tasks_of(api, repository="library/fleet-sync")
        assert sorted(t["tag"] for t in tasks) == tags  # one task per tag: a conversion, then tag tasks
        assert sorted(t["kind"] for t in tasks) == ["convert"] + ["tag"] * 4
        finished = [wait_finished(api, t["id"], timeout=600) for t in tasks]
    assert all(t["status"] == "succeeded" for t in finished), finished
    for tag in tags:
        assert_estargz_of(
            get_manifest(registry_plain, "library/fleet-sync", f"{tag}{SUFFIX}").json(), image.descriptor()
        )
