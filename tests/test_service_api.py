"""The service's HTTP surface against a real `acceld serve` process (intake only: no workers), real SQLite.

Webhook checks (auth, content types, sizes, malformed bodies, unconfigured hosts), dedup of
replayed events, the loop guard, the management API, health and metrics, and schemathesis runs
against the served OpenAPI document.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness.registry import RunningRegistry
from service_helpers import (
    API_TOKEN,
    ROBOT,
    WEBHOOK_SECRET,
    ServiceProcess,
    cloudevent_payload,
    default_payload,
    post_event,
    resource,
    run_service,
    run_trap_server,
    service_config,
    tasks_of,
    write_config,
)

from acceld.convert.api import make_driver

OTHER_HOST = "other.registry.test:5000"
OTHER_SECRET = "other-secret"


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def service(
    registry_plain: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """An intake-only service (concurrency 0): accepted events stay queued, nothing is converted."""
    work = tmp_path_factory.mktemp("service-api")
    config = service_config(
        work / "data",
        {registry_plain.host: {"plain_http": True, "username": ROBOT, "password": "x"}},
        workers={"concurrency": 0},
        server={"port": 0, "max_body_bytes": 4096},
        rules=[
            {
                "name": "library",
                "repositories": ["library/**"],
                "tags": ["v*", "latest"],
                "drivers": [{"name": "estargz"}],
            },
            {
                "name": "pulls",
                "repositories": ["lazy/**"],
                "events": ["PULL_ARTIFACT"],
                "drivers": [{"name": "estargz"}],
            },
        ],
    )
    config["webhook"]["sources"][OTHER_HOST] = {"auth_header": OTHER_SECRET}
    with run_service(write_config(work / "acceld.yml", config), work / "serve.log") as running:
        yield running


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.api() as client:
        yield client


def test_tag_push_in_both_formats_is_queued_once(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    digest = fake_digest("formats")
    res = [resource(registry_plain.host, "library/formats", digest, "v1")]
    first = post_event(service.url, default_payload("PUSH_ARTIFACT", res))
    second = post_event(service.url, cloudevent_payload("PUSH_ARTIFACT", res), cloudevents=True)
    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text
    (task,) = first.json()["tasks"]
    assert task["created"] is True and task["driver"] == "estargz"
    assert second.json()["tasks"][0] == {**task, "created": False}
    shown = api.get(f"/api/v1/tasks/{task['id']}").json()
    assert shown["status"] == "queued"
    assert shown["source"] == f"{registry_plain.host}/library/formats@{digest}"
    assert shown["tag"] == "v1" and shown["events"] == 2 and shown["rule"] == "library"


def test_replayed_event_is_one_task(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    digest = fake_digest("replay")
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/replay", digest, "v2")]
    )
    ids = {post_event(service.url, payload).json()["tasks"][0]["id"] for _ in range(10)}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: post_event(service.url, payload), range(10)))
    assert {r.status_code for r in replies} == {202}
    ids |= {r.json()["tasks"][0]["id"] for r in replies}
    assert len(ids) == 1
    tasks = tasks_of(api, repository="library/replay")
    assert len(tasks) == 1 and tasks[0]["events"] == 20


def test_concurrent_first_deliveries_create_one_task(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    digest = fake_digest("race")
    payload = default_payload("PUSH_ARTIFACT", [resource(registry_plain.host, "library/race", digest, "v1")])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: post_event(service.url, payload), range(10)))
    created = [r.json()["tasks"][0]["created"] for r in replies]
    assert created.count(True) == 1
    assert len(tasks_of(api, repository="library/race")) == 1


def test_acceld_own_pushes_are_ignored(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    suffix = make_driver("estargz", {}).tag_suffix
    digest = fake_digest("own")
    by_robot = post_event(
        service.url,
        default_payload(
            "PUSH_ARTIFACT", [resource(registry_plain.host, "library/own", digest, "v1")], operator=ROBOT
        ),
    )
    converted_tag = post_event(
        service.url,
        default_payload(
            "PUSH_ARTIFACT", [resource(registry_plain.host, "library/own", digest, f"v1{suffix}")]
        ),
    )
    for reply in (by_robot, converted_tag):
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "ignored" and reply.json()["tasks"] == []
    assert "own account" in by_robot.json()["ignored"][0]["reason"]
    assert "converted image" in converted_tag.json()["ignored"][0]["reason"]
    assert tasks_of(api, repository="library/own") == []


def test_rules_filter_repositories_tags_and_events(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    host = registry_plain.host
    cases = [
        ("PUSH_ARTIFACT", resource(host, "other/app", fake_digest("r1"), "v1"), False),  # repository
        ("PUSH_ARTIFACT", resource(host, "library/app", fake_digest("r2"), "dev"), False),  # tag pattern
        ("PUSH_ARTIFACT", resource(host, "library/app", fake_digest("r3"), "v3"), True),
        ("PULL_ARTIFACT", resource(host, "library/app", fake_digest("r4"), "v4"), False),  # event type
        ("PULL_ARTIFACT", resource(host, "lazy/app", fake_digest("r5"), "anything"), True),
        ("PUSH_ARTIFACT", resource(host, "lazy/app", fake_digest("r6"), "anything"), False),
    ]
    for event_type, res, queued in cases:
        reply = post_event(service.url, default_payload(event_type, [res]))
        assert reply.status_code == (202 if queued else 200), (event_type, res, reply.text)
    queued_digests = {
        t["source_digest"] for t in tasks_of(api) if t["repository"] in ("library/app", "lazy/app")
    }
    assert queued_digests == {fake_digest("r3"), fake_digest("r5")}


@pytest.mark.parametrize(
    "event_type",
    ["PULL_ARTIFACT", "QUOTA_EXCEED", "REPLICATION", "SCANNING_COMPLETED", "TAG_RETENTION", "SOMETHING_NEW"],
)
def test_other_events_are_acknowledged(
    service: ServiceProcess, registry_plain: RunningRegistry, event_type: str
) -> None:
    resources = (
        []
        if event_type in ("REPLICATION", "TAG_RETENTION")
        else [resource(registry_plain.host, "library/events", fake_digest(event_type), "v1")]
    )
    reply = post_event(service.url, default_payload(event_type, resources))
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "ignored"


def test_delete_event_releases_the_dedup_key(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    res = [resource(registry_plain.host, "library/deleted", fake_digest("deleted"), "v1")]
    task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
    assert api.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200  # a finished task
    deletion = post_event(
        service.url,
        default_payload("DELETE_ARTIFACT", res),
    )
    assert deletion.status_code == 200 and deletion.json()["status"] == "ignored"
    again = post_event(service.url, default_payload("PUSH_ARTIFACT", res))
    assert again.status_code == 202 and again.json()["tasks"][0]["created"] is True
    assert again.json()["tasks"][0]["id"] != task_id


@pytest.mark.parametrize(
    "auth", [None, "", "Bearer wrong", WEBHOOK_SECRET + "x", WEBHOOK_SECRET[:-1], "bearer webhook-s3cret"]
)
def test_missing_empty_or_forged_auth_is_401(
    service: ServiceProcess, registry_plain: RunningRegistry, auth: str | None
) -> None:
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/a", fake_digest("a"), "v1")]
    )
    reply = post_event(service.url, payload, auth=auth)
    assert reply.status_code == 401
    assert reply.json()["code"] == "ERR_UNAUTHORIZED"


def test_secret_of_another_source_is_401(service: ServiceProcess, registry_plain: RunningRegistry) -> None:
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/a", fake_digest("b"), "v1")]
    )
    assert post_event(service.url, payload, auth=OTHER_SECRET).status_code == 401
    other = default_payload("PUSH_ARTIFACT", [resource(OTHER_HOST, "library/a", fake_digest("b"), "v1")])
    assert post_event(service.url, other, auth=WEBHOOK_SECRET).status_code == 401


def test_unconfigured_host_is_403_and_never_contacted(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    with run_trap_server() as (trap_host, hits):
        for payload in (
            default_payload("PUSH_ARTIFACT", [resource(trap_host, "library/trap", fake_digest("t"), "v1")]),
            default_payload(
                "PUSH_ARTIFACT",
                [
                    resource(registry_plain.host, "library/trap", fake_digest("t"), "v1"),
                    resource(trap_host, "library/trap", fake_digest("t"), "v1"),
                ],
            ),
            default_payload("DELETE_ARTIFACT", [resource(trap_host, "library/trap", fake_digest("t"), "v1")]),
        ):
            reply = post_event(service.url, payload)
            assert reply.status_code == 403, reply.text
            assert trap_host in reply.json()["message"]
    assert hits == []
    assert tasks_of(api, repository="library/trap") == []


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b"\xff\xfe",
        b'"text"',
        b"{}",
        b'{"type": 5}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":{"a":1}}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"no-slash"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h.test/UPPER/case:v1"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h.test/a/b"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h.test/a/b@sha256:12"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"md5:1","resource_url":"h.test/a/b:v1"}]}}',
        b'{"specversion":"0.3","type":"harbor.artifact.pushed"}',
        b'{"specversion":"1.0","type":"harbor.artifact.pushed","data":[1]}',
        b"[" * 1000 + b"]" * 1000,
        b'{"type":"PUSH_ARTIFACT","x":' + b"[" * 1500 + b"]" * 1500 + b"}",
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h.test/a/b:v1\\n"}]}}',
        '{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h.test/a/b:v\u00e9"}]}}'.encode(),
    ],
)
def test_malformed_payload_is_400(service: ServiceProcess, body: bytes) -> None:
    reply = httpx.post(
        f"{service.url}/api/v1/conversions",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": WEBHOOK_SECRET},
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "ERR_ILLEGAL_PARAMETER" and reply.json()["message"]


def test_event_without_event_data_is_acknowledged(service: ServiceProcess) -> None:
    reply = httpx.post(
        f"{service.url}/api/v1/conversions",
        json={"type": "PUSH_ARTIFACT"},
        headers={"Authorization": WEBHOOK_SECRET},
    )
    assert reply.status_code == 200 and reply.json()["status"] == "ignored"


def test_oversized_body_is_413(service: ServiceProcess, registry_plain: RunningRegistry) -> None:
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/big", fake_digest("x"), "v1")]
    )
    payload["padding"] = "x" * 5000
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "Authorization": WEBHOOK_SECRET}
    assert httpx.post(f"{service.url}/api/v1/conversions", content=body, headers=headers).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    reply = httpx.post(f"{service.url}/api/v1/conversions", content=chunks(), headers=headers)
    assert reply.status_code == 413 and reply.json()["code"] == "ERR_PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/cloudevents-batch+json",
        "multipart/form-data",
    ],
)
def test_wrong_content_type_is_415(service: ServiceProcess, content_type: str | None) -> None:
    headers = {"Authorization": WEBHOOK_SECRET}
    if content_type:
        headers["Content-Type"] = content_type
    reply = httpx.post(
        f"{service.url}/api/v1/conversions", content=b'{"type":"PUSH_ARTIFACT"}', headers=headers
    )
    assert reply.status_code == 415


def test_content_type_parameters_are_accepted(service: ServiceProcess) -> None:
    reply = httpx.post(
        f"{service.url}/api/v1/conversions",
        content=b'{"type":"PUSH_ARTIFACT"}',
        headers={"Authorization": WEBHOOK_SECRET, "Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert reply.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": API_TOKEN}, {"Authorization": WEBHOOK_SECRET}],
)
def test_management_api_needs_its_token(service: ServiceProcess, headers: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/x"),
        ("POST", "/api/v1/tasks/x/retry"),
        ("POST", "/api/v1/tasks/x/cancel"),
    ):
        reply = httpx.request(method, service.url + path, headers=headers)
        assert reply.status_code == 401, (method, path)
        assert reply.json()["code"] == "ERR_UNAUTHORIZED"


def test_list_filters_and_pagination(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    digests = [fake_digest(f"page-{n}") for n in range(5)]
    for n, digest in enumerate(digests):
        post_event(
            service.url,
            default_payload(
                "PUSH_ARTIFACT", [resource(registry_plain.host, "library/paged", digest, f"v{n}")]
            ),
        )
    first = api.get("/api/v1/tasks", params={"repository": "library/paged", "limit": 2}).json()
    second = api.get("/api/v1/tasks", params={"repository": "library/paged", "limit": 2, "offset": 2}).json()
    last = api.get("/api/v1/tasks", params={"repository": "library/paged", "limit": 2, "offset": 4}).json()
    assert first["total"] == second["total"] == 5
    pages = [t["source_digest"] for page in (first, second, last) for t in page["items"]]
    assert pages == list(reversed(digests))  # newest first
    assert api.get("/api/v1/tasks", params={"status": "running"}).json()["items"] == []
    assert api.get("/api/v1/tasks", params={"status": "bogus"}).status_code == 422
    assert api.get("/api/v1/tasks", params={"limit": 0}).status_code == 422


def test_get_retry_cancel(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client
) -> None:
    assert api.get("/api/v1/tasks/nonexistent").status_code == 404
    assert api.post("/api/v1/tasks/nonexistent/retry").status_code == 404
    reply = post_event(
        service.url,
        default_payload(
            "PUSH_ARTIFACT", [resource(registry_plain.host, "library/manage", fake_digest("manage"), "v1")]
        ),
    )
    task_id = reply.json()["tasks"][0]["id"]
    assert api.post(f"/api/v1/tasks/{task_id}/retry").status_code == 409  # still queued
    cancelled = api.post(f"/api/v1/tasks/{task_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished"] is not None
    conflict = api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert conflict.status_code == 409 and conflict.json()["code"] == "ERR_CONFLICT"
    retried = api.post(f"/api/v1/tasks/{task_id}/retry").json()
    assert retried["status"] == "queued" and retried["attempts"] == 0 and retried["error"] is None


def test_cli_talks_to_the_api(service: ServiceProcess, registry_plain: RunningRegistry) -> None:
    reply = post_event(
        service.url,
        default_payload(
            "PUSH_ARTIFACT", [resource(registry_plain.host, "library/cli", fake_digest("cli"), "v1")]
        ),
    )
    task_id = reply.json()["tasks"][0]["id"]
    base = [sys.executable, "-c", "from acceld.cli import main; main()", "tasks"]
    auth = ["--url", service.url, "--token", API_TOKEN]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args, *auth], capture_output=True, text=True, timeout=60)

    listing = cli("list", "--repository", "library/cli")
    assert listing.returncode == 0 and task_id in listing.stdout
    shown = cli("show", task_id, "--json")
    assert json.loads(shown.stdout)["id"] == task_id
    assert cli("cancel", task_id).returncode == 0
    assert "queued" in cli("retry", task_id).stdout
    missing = cli("show", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: 404")
    wrong = subprocess.run(
        [*base, "list", "--url", service.url, "--token", "bad"], capture_output=True, text=True
    )
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_health_and_metrics(service: ServiceProcess, registry_plain: RunningRegistry) -> None:
    for path in ("/healthz", "/readyz", "/api/v1/health"):
        reply = httpx.get(service.url + path)
        assert reply.status_code == 200 and reply.json()["status"] == "ok"
    before = _metric(service, 'acceld_webhook_requests_total{outcome="accepted"}')
    payload = default_payload(
        "PUSH_ARTIFACT", [resource(registry_plain.host, "library/metrics", fake_digest("m"), "v1")]
    )
    assert post_event(service.url, payload).status_code == 202
    assert post_event(service.url, payload, auth="Bearer wrong").status_code == 401
    assert _metric(service, 'acceld_webhook_requests_total{outcome="accepted"}') == before + 1
    assert _metric(service, 'acceld_webhook_requests_total{outcome="unauthorized"}') >= 1
    assert _metric(service, 'acceld_tasks{status="queued"}') >= 1
    unknown = httpx.get(service.url + "/nope")
    assert unknown.status_code == 404 and unknown.json()["code"] == "ERR_INVALID_ENDPOINT"


def _metric(service: ServiceProcess, series: str) -> float:
    """The value of one Prometheus series (0 when it does not exist yet)."""
    for line in httpx.get(service.url + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _schemathesis(service: ServiceProcess, header: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "-H",
            f"Authorization: {header}",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,  # schemathesis keeps state in ./.schemathesis
    )


@pytest.mark.parametrize("header", [f"Bearer {API_TOKEN}", WEBHOOK_SECRET])
def test_schemathesis(
    service: ServiceProcess, registry_plain: RunningRegistry, api: httpx.Client, header: str, tmp_path: Path
) -> None:
    result = _schemathesis(service, header, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in service.log_text()
    # Whatever hosts the generated payloads named, only configured sources got tasks.
    hosts = {t["registry"] for t in tasks_of(api)}
    assert hosts <= {registry_plain.host, OTHER_HOST}
