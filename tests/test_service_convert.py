"""The service end to end: Harbor events → queued tasks → conversions in worker processes → converted
images (with `subject`) in a real docker-registry; restarts, kill -9, 503s, a pull-only robot, sync."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.clients import skopeo_copy
from harness.registry import RunningRegistry, run_registry
from harness.testimages import ImageSet
from service_helpers import (
    ROBOT,
    ServiceProcess,
    acceld_command,
    cloudevent_payload,
    default_payload,
    post_event,
    resource,
    run_flaky_proxy,
    run_service,
    service_config,
    tasks_of,
    wait_finished,
    wait_for,
    write_config,
)

from acceld.convert.api import make_driver
from acceld.service.store import TaskStore

SUFFIX = make_driver("estargz", {}).tag_suffix
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and has not exited (an unreaped zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def push(test_image: Any, registry: RunningRegistry, reference: str, user: str | None = None) -> None:
    skopeo_copy(
        test_image.ref, f"docker://{registry.host}/{reference}", dest_registry=registry, dest_user=user
    )


def get_manifest(registry: RunningRegistry, repository: str, ref: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/v2/{repository}/manifests/{ref}", headers={"Accept": ACCEPT})


def source_entry(source: dict[str, Any]) -> dict[str, Any]:
    return {k: source[k] for k in ("mediaType", "digest", "size")}


def assert_estargz_of(converted: dict[str, Any], source: dict[str, Any]) -> None:
    assert converted["subject"] == source_entry(source)
    assert converted["layers"] and all(
        "containerd.io/snapshot/stargz/toc.digest" in layer.get("annotations", {})
        for layer in converted["layers"]
    )


@pytest.fixture(scope="module")
def service(
    registry_plain: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    work = tmp_path_factory.mktemp("service-convert")
    config = service_config(
        work / "data",
        {registry_plain.host: {"plain_http": True}},
        rules=[{"name": "all", "drivers": [{"name": "estargz"}], "delete_converted": True}],
    )
    config["webhook"]["ignore_operators"] = [ROBOT]
    # umask 0: the service makes its files private whatever umask it starts with
    with run_service(write_config(work / "acceld.yml", config), work / "serve.log", umask=0) as running:
        yield running


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.api() as client:
        yield client


def test_tag_push_converts_once_and_own_push_is_ignored(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    image = test_images.busybox_amd64
    push(image, registry_plain, "library/app:v1")
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/app", image.digest, "v1")]
    )
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: post_event(service.url, payload), range(10)))
    assert {r.status_code for r in replies} == {202}
    (task_id,) = {r.json()["tasks"][0]["id"] for r in replies}

    task = wait_finished(api, task_id)
    assert task["status"] == "succeeded", task
    assert task["attempts"] == 1 and task["events"] == 10
    assert task["target"] == f"{registry_plain.host}/library/app:v1{SUFFIX}"
    assert task["source_size"] > 0 and task["target_size"] > 0 and task["finished"] >= task["started"]
    converted = get_manifest(registry_plain, "library/app", f"v1{SUFFIX}")
    assert converted.headers["docker-content-digest"] == task["target_digest"]
    assert_estargz_of(converted.json(), image.descriptor())

    # Harbor's events for acceld's own push: by its robot, and (any operator) the converted tag.
    own = resource(registry_plain.host, "library/app", task["target_digest"], f"v1{SUFFIX}")
    assert post_event(service.url, default_payload("PUSH_ARTIFACT", [own], operator=ROBOT)).status_code == 200
    assert post_event(service.url, default_payload("PUSH_ARTIFACT", [own])).status_code == 200
    # A digest-only event for the converted manifest is queued but recognised by its content.
    by_digest = resource(registry_plain.host, "library/app", task["target_digest"])
    reply = post_event(service.url, cloudevent_payload("PUSH_ARTIFACT", [by_digest]), cloudevents=True)
    assert reply.status_code == 202
    skipped = wait_finished(api, reply.json()["tasks"][0]["id"])
    assert skipped["status"] == "skipped" and "subject" in skipped["error"]

    # A later redelivery of the original event is the same, finished task: nothing runs again.
    again = post_event(service.url, payload).json()["tasks"][0]
    assert again == {**again, "id": task_id, "status": "succeeded", "created": False}
    assert [
        t["id"] for t in tasks_of(api, repository="library/app") if t["source_digest"] == image.digest
    ] == [task_id]


def test_data_and_cache_stay_private(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    """Database, API token, layer cache and spools: directories 0700, files 0600 (umask of the tests: 0)."""
    image = test_images.busybox_amd64
    push(image, registry_plain, "library/private:v1")
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/private", image.digest, "v1")]
    )
    reply = post_event(service.url, payload)
    assert reply.status_code == 202, reply.text
    assert wait_finished(api, reply.json()["tasks"][0]["id"])["status"] == "succeeded"
    data = service.log.parent / "data"
    assert (data / "cache" / "blobs" / "sha256").is_dir() and (data / "acceld.db").is_file()
    for directory, dirs, files in os.walk(data):
        for name in dirs:
            assert stat.S_IMODE(os.stat(Path(directory, name)).st_mode) == 0o700, Path(directory, name)
        for name in files:
            assert stat.S_IMODE(os.stat(Path(directory, name)).st_mode) == 0o600, Path(directory, name)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_multi_arch_push_converts_once_as_an_index(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    index = test_images.busybox_index
    push(index, registry_plain, "library/multi:v1")
    children = index.read_json()["manifests"]
    host = registry_plain.host
    events = [
        cloudevent_payload(
            "PUSH_ARTIFACT", [resource(host, "library/multi", child["digest"])], event_id=f"child-{n}"
        )
        for n, child in enumerate(children)
    ]
    events.append(cloudevent_payload("PUSH_ARTIFACT", [resource(host, "library/multi", index.digest, "v1")]))
    task_ids = []
    for event in events:  # Harbor's order: the children by digest, then the index by tag
        reply = post_event(service.url, event, cloudevents=True)
        assert reply.status_code == 202, reply.text
        task_ids.append(reply.json()["tasks"][0]["id"])

    finished = [wait_finished(api, task_id) for task_id in task_ids]
    assert [t["status"] for t in finished] == ["skipped", "skipped", "succeeded"], finished
    assert all("part of the index library/multi:v1" in t["error"] for t in finished[:2])
    converted = get_manifest(registry_plain, "library/multi", f"v1{SUFFIX}").json()
    assert converted["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert len(converted["manifests"]) == len(children)
    sources = {c["platform"]["architecture"]: c for c in children}
    for entry in converted["manifests"]:
        child = get_manifest(registry_plain, "library/multi", entry["digest"]).json()
        assert_estargz_of(child, sources[entry["platform"]["architecture"]])


def test_delete_event_deletes_the_converted_image(
    service: ServiceProcess, api: httpx.Client, registry_plain: RunningRegistry, test_images: ImageSet
) -> None:
    image = test_images.busybox_arm64
    push(image, registry_plain, "library/gone:v1")
    res = [resource(registry_plain.host, "library/gone", image.digest, "v1")]
    pushed = post_event(service.url, cloudevent_payload("PUSH_ARTIFACT", res), cloudevents=True)
    converted = wait_finished(api, pushed.json()["tasks"][0]["id"])
    assert converted["status"] == "succeeded"
    assert_estargz_of(get_manifest(registry_plain, "library/gone", f"v1{SUFFIX}").json(), image.descriptor())
    assert get_manifest(registry_plain, "library/gone", f"v1{SUFFIX}").status_code == 200

    reply = post_event(service.url, cloudevent_payload("DELETE_ARTIFACT", res), cloudevents=True)
    assert reply.status_code == 202
    deletion = wait_finished(api, reply.json()["tasks"][0]["id"])
    assert deletion["status"] == "succeeded" and converted["target_digest"] in deletion["target"]
    assert get_manifest(registry_plain, "library/gone", converted["target_digest"]).status_code == 404


def test_pull_only_robot_fails_once_with_the_reason(
    registry_token: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    push(test_images.busybox_amd64, registry_token, "library/readonly:v1", user="alice")
    config = service_config(
        tmp_path / "data",
        {
            registry_token.host: {
                "plain_http": True,
                "username": "reader",
                "password": registry_token.users["reader"],
            }
        },
    )
    with (
        run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
        service.api() as api,
    ):
        res = [resource(registry_token.host, "library/readonly", test_images.busybox_amd64.digest, "v1")]
        reply = post_event(service.url, default_payload("PUSH_ARTIFACT", res))
        task = wait_finished(api, reply.json()["tasks"][0]["id"])
    assert task["status"] == "failed" and task["attempts"] == 1, task
    assert "library/readonly" in task["error"]
    assert any(
        word in task["error"].lower() for word in ("permission", "denied", "unauthorized", "authentication")
    )


def test_registry_503s_are_retried(test_images: ImageSet, tmp_path: Path) -> None:
    with (
        run_registry(tmp_path / "registry") as registry,
        run_flaky_proxy(registry.host, fail_puts=6) as proxy,
    ):
        push(test_images.busybox_amd64, registry, "library/flaky:v1")
        # More 503s than the registry client retries within one attempt: the task itself must retry.
        config = service_config(
            tmp_path / "data", {proxy.host: {"plain_http": True}}, workers={"max_attempts": 8}
        )
        with (
            run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
            service.api() as api,
        ):
            res = [resource(proxy.host, "library/flaky", test_images.busybox_amd64.digest, "v1")]
            task = wait_finished(
                api, post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
            )
        assert task["status"] == "succeeded", task
        assert task["attempts"] >= 2, (task, proxy.requests)
        assert sum(1 for _, _, status in proxy.requests if status == 503) == 6
        converted = get_manifest(registry, "library/flaky", f"v1{SUFFIX}")
        assert_estargz_of(converted.json(), test_images.busybox_amd64.descriptor())


def test_kill_9_mid_conversion_then_restart_completes(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    image = test_images.edge
    push(image, registry_plain, "library/killed:v1")
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(
            tmp_path / "data", {registry_plain.host: {"plain_http": True}}, workers={"lease_seconds": 3}
        ),
    )
    res = [resource(registry_plain.host, "library/killed", image.digest, "v1")]
    with run_service(config_file, tmp_path / "serve-1.log") as service, service.api() as api:
        task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
        wait_for(
            lambda: api.get(f"/api/v1/tasks/{task_id}").json()["status"] == "running", what="a running task"
        )
        jobs = wait_for(lambda: children(service.process.pid), what="the conversion process")
        service.kill()
    # The orphaned conversion process notices its server is gone and exits.
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in jobs), timeout=30, what="the job to exit"
    )
    with run_service(config_file, tmp_path / "serve-2.log") as service, service.api() as api:
        task = wait_finished(api, task_id)
    assert task["status"] == "succeeded", task
    assert task["attempts"] == 2
    assert_estargz_of(
        get_manifest(registry_plain, "library/killed", f"v1{SUFFIX}").json(), image.descriptor()
    )


def test_kill_9_loses_no_acknowledged_event(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(
            tmp_path / "data", {registry_plain.host: {"plain_http": True}}, workers={"concurrency": 0}
        ),
    )
    payloads = [
        default_payload(
            "PUSH_ARTIFACT",
            [
                resource(
                    registry_plain.host,
                    "library/durable",
                    "sha256:" + hashlib.sha256(str(n).encode()).hexdigest(),
                    "v1",
                )
            ],
        )
        for n in range(200)
    ]
    with run_service(config_file, tmp_path / "serve-1.log") as service:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda p: post_event(service.url, p), payloads))
        service.kill()
    acknowledged = {r.json()["tasks"][0]["id"] for r in replies if r.status_code == 202}
    assert len(acknowledged) == 200
    with run_service(config_file, tmp_path / "serve-2.log") as service, service.api() as api:
        stored = {t["id"] for t in tasks_of(api, repository="library/durable")}
    assert stored == acknowledged


def run_sync(config_file: Path, *args: str) -> str:
    """What `acceld sync ARGS` prints (it must succeed)."""
    command = acceld_command("sync", *args, "--config", str(config_file))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_sync_converts_images_pushed_while_stopped(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    rules = [{"name": "synced", "repositories": ["sync/**"], "drivers": [{"name": "estargz"}]}]
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules),
    )
    push(test_images.busybox_amd64, registry_plain, "sync/one:v1")
    push(test_images.busybox_index, registry_plain, "sync/two:v2")

    assert "queued: 2" in run_sync(config_file)
    assert "queued: 0" in run_sync(config_file)  # the same tasks, not new ones
    with run_service(config_file, tmp_path / "serve.log") as service, service.api() as api:
        tasks = tasks_of(api)
        assert len(tasks) == 2
        finished = [wait_finished(api, t["id"]) for t in tasks]
    assert {t["status"] for t in finished} == {"succeeded"}, finished
    assert_estargz_of(
        get_manifest(registry_plain, "sync/one", f"v1{SUFFIX}").json(), test_images.busybox_amd64.descriptor()
    )
    assert get_manifest(registry_plain, "sync/two", f"v2{SUFFIX}").status_code == 200
    assert "up to date: 2" in run_sync(config_file)


@pytest.mark.parametrize(("grace", "after_stop"), [(120, ("succeeded", 1)), (0, ("queued", 0))])
def test_sigterm_finishes_or_requeues_running_work(
    registry_plain: RunningRegistry,
    test_images: ImageSet,
    tmp_path: Path,
    grace: int,
    after_stop: tuple[str, int],
) -> None:
    image = test_images.whiteout
    repository = f"library/term{grace}"
    push(image, registry_plain, f"{repository}:v1")
    config = service_config(
        tmp_path / "data",
        {registry_plain.host: {"plain_http": True}},
        workers={"shutdown_grace_seconds": grace},
    )
    config_file = write_config(tmp_path / "acceld.yml", config)
    res = [resource(registry_plain.host, repository, image.digest, "v1")]
    with run_service(config_file, tmp_path / "serve-1.log") as service, service.api() as api:
        task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
        wait_for(
            lambda: api.get(f"/api/v1/tasks/{task_id}").json()["status"] == "running", what="a running task"
        )
        assert service.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    task = TaskStore.open(f"sqlite:///{tmp_path / 'data' / 'acceld.db'}").get(task_id)
    assert task is not None and (task.status, task.attempts) == after_stop
    if task.status == "queued":
        with run_service(config_file, tmp_path / "serve-2.log") as service, service.api() as api:
            finished = wait_finished(api, task_id)
        assert (finished["status"], finished["attempts"]) == ("succeeded", 1)
    assert_estargz_of(get_manifest(registry_plain, repository, f"v1{SUFFIX}").json(), image.descriptor())


def test_periodic_sync_converts_pushes_without_webhooks(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    rules = [{"name": "periodic", "repositories": ["periodic/**"], "drivers": [{"name": "estargz"}]}]
    config = service_config(
        tmp_path / "data",
        {registry_plain.host: {"plain_http": True}},
        rules=rules,
        sync={"interval_seconds": 1},
    )
    with (
        run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
        service.api() as api,
    ):
        push(test_images.busybox_arm64, registry_plain, "periodic/app:v7")
        (task,) = wait_for(
            lambda: tasks_of(api, repository="periodic/app"), what="a task from the periodic sync"
        )
        finished = wait_finished(api, task["id"])
        assert finished["status"] == "succeeded" and finished["operator"] == "acceld-sync"
        assert_estargz_of(
            get_manifest(registry_plain, "periodic/app", f"v7{SUFFIX}").json(),
            test_images.busybox_arm64.descriptor(),
        )
        assert len(tasks_of(api, repository="periodic/app")) == 1  # later rounds find it converted


def test_sync_drain_converts_without_a_server(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    rules = [{"name": "drained", "repositories": ["drain/app"], "drivers": [{"name": "estargz"}]}]
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules),
    )
    push(test_images.busybox_amd64, registry_plain, "drain/app:v1")
    result = subprocess.run(
        acceld_command("sync", "--drain", "--config", str(config_file)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "queued: 1" in result.stdout and "succeeded: 1" in result.stdout
    assert_estargz_of(
        get_manifest(registry_plain, "drain/app", f"v1{SUFFIX}").json(),
        test_images.busybox_amd64.descriptor(),
    )


def test_sync_finds_untagged_soci_v1_results_through_referrers(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    """A SOCI v1 index has no tag: sync and the job find it as a referrer of the source manifest
    (of each platform's manifest for an index) and leave the image alone."""
    options = {"soci_version": "v1", "min_layer_size": 0, "span_size": "64K"}
    rules = [
        {"name": "soci", "repositories": ["sociv1/**"], "drivers": [{"name": "soci", "options": options}]}
    ]
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules),
    )
    push(test_images.busybox_amd64, registry_plain, "sociv1/one:v1")
    push(test_images.busybox_index, registry_plain, "sociv1/two:v2")

    drained = run_sync(config_file, "--drain")
    assert "queued: 2" in drained and "succeeded: 2" in drained, drained
    referrers = get_manifest(registry_plain, "sociv1/one", "sha256-" + test_images.busybox_amd64.digest[7:])
    (entry,) = referrers.json()["manifests"]
    assert entry["artifactType"] == "application/vnd.amazon.soci.index.v1+json"
    assert get_manifest(registry_plain, "sociv1/one", entry["digest"]).json()["subject"] == source_entry(
        test_images.busybox_amd64.descriptor()
    )
    assert get_manifest(registry_plain, "sociv1/one", "v1-soci").status_code == 404  # v1: no tag
    again = run_sync(config_file)
    assert "up to date: 2  queued: 0  requeued: 0" in again, again


def test_sync_converts_an_index_whose_soci_v1_results_cover_only_some_platforms(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    """Each platform's SOCI v1 index refers to its own manifest: one platform's result (a conversion
    that stopped halfway, or one of a single platform) does not make the index up to date."""
    options = {"soci_version": "v1", "min_layer_size": 0, "span_size": "64K"}
    soci = {"name": "soci", "options": options}
    rules = [{"name": "soci", "repositories": ["sociv1part/**"], "drivers": [soci]}]
    config_file = write_config(
        tmp_path / "acceld.yml",
        service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules),
    )
    push(test_images.busybox_index, registry_plain, "sociv1part/app:v1")
    amd64_only = subprocess.run(
        acceld_command(
            "convert", f"{registry_plain.host}/sociv1part/app:v1", "-d", "soci", "--soci-version", "v1",
            "--min-layer-size", "0", "--span-size", "64K", "--platform", "linux/amd64", "--plain-http",
            "--cache-dir", str(tmp_path / "cache"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert amd64_only.returncode == 0, amd64_only.stderr
    index = get_manifest(registry_plain, "sociv1part/app", "v1").json()
    children = {entry["platform"]["architecture"]: entry["digest"] for entry in index["manifests"]}

    def referrers(digest: str) -> list[dict[str, Any]]:
        listing = get_manifest(registry_plain, "sociv1part/app", "sha256-" + digest[7:])
        return listing.json()["manifests"] if listing.status_code == 200 else []

    assert len(referrers(children["amd64"])) == 1 and referrers(children["arm64"]) == []

    drained = run_sync(config_file, "--drain")
    assert "queued: 1" in drained and "succeeded: 1" in drained, drained
    assert "already converted" not in drained
    assert all(len(referrers(digest)) == 1 for digest in children.values()), children
    again = run_sync(config_file)
    assert "up to date: 1  queued: 0  requeued: 0" in again, again


def test_cancelling_a_running_task_stops_its_process(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    image = test_images.edge
    push(image, registry_plain, "library/cancelled:v1")
    config = service_config(
        tmp_path / "data", {registry_plain.host: {"plain_http": True}}, workers={"lease_seconds": 3}
    )
    res = [resource(registry_plain.host, "library/cancelled", image.digest, "v1")]
    with (
        run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
        service.api() as api,
    ):
        task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
        wait_for(
            lambda: api.get(f"/api/v1/tasks/{task_id}").json()["status"] == "running", what="a running task"
        )
        jobs = wait_for(lambda: children(service.process.pid), what="the conversion process")
        cancelled = api.post(f"/api/v1/tasks/{task_id}/cancel").json()
        assert cancelled["status"] == "cancelled"
        wait_for(lambda: not any(running(pid) for pid in jobs), timeout=30, what="the job to stop")
        task = api.get(f"/api/v1/tasks/{task_id}").json()
    assert (task["status"], task["error"]) == ("cancelled", "cancelled by request")


def test_one_push_yields_several_formats(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    drivers = ["estargz", "nydus", "zstdchunked"]
    rules = [{"name": "all-formats", "drivers": [{"name": name} for name in drivers]}]
    config = service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules)
    image = test_images.busybox_amd64
    push(image, registry_plain, "library/formats:v1")
    res = [resource(registry_plain.host, "library/formats", image.digest, "v1")]
    with (
        run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
        service.api() as api,
    ):
        reply = post_event(service.url, default_payload("PUSH_ARTIFACT", res))
        assert [t["driver"] for t in reply.json()["tasks"]] == drivers
        finished = [wait_finished(api, t["id"]) for t in reply.json()["tasks"]]
    assert [t["status"] for t in finished] == ["succeeded"] * 3, finished
    for name in drivers:
        suffix = make_driver(name, {}).tag_suffix
        converted = get_manifest(registry_plain, "library/formats", f"v1{suffix}").json()
        assert converted["subject"] == source_entry(image.descriptor()), name


def test_rule_platforms_select_index_children(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    rules = [{"name": "arm", "platforms": ["linux/arm64"], "drivers": [{"name": "estargz"}]}]
    config = service_config(tmp_path / "data", {registry_plain.host: {"plain_http": True}}, rules=rules)
    index = test_images.busybox_index
    push(index, registry_plain, "library/armonly:v1")
    res = [resource(registry_plain.host, "library/armonly", index.digest, "v1")]
    with (
        run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
        service.api() as api,
    ):
        task = wait_finished(
            api, post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
        )
    assert task["status"] == "succeeded" and task["platforms"] == ["linux/arm64"], task
    converted = get_manifest(registry_plain, "library/armonly", f"v1{SUFFIX}").json()
    assert [m["platform"]["architecture"] for m in converted["manifests"]] == ["arm64"]
