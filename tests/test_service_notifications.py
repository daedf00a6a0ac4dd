"""Completion notifications end to end: a real `acceld serve`, a real registry and a real HTTP receiver.
One signed CloudEvent per finished task, also after the receiver fails twice and after the sender is
killed between the task's end and the delivery; visible in the management API."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
from pathlib import Path
from typing import Any

import httpx
from harness.clients import skopeo_copy
from harness.registry import RunningRegistry
from harness.testimages import ImageSet
from service_helpers import (
    NotificationReceiver,
    Received,
    default_payload,
    post_event,
    resource,
    run_notification_receiver,
    run_service,
    run_trap_server,
    service_config,
    wait_finished,
    wait_for,
    write_config,
)

HOOK_SECRET = "n0tify-s3cret"


def notifying_config(data: Path, registry: RunningRegistry, url: str, **extra: Any) -> dict[str, Any]:
    return service_config(
        data,
        {registry.host: {"plain_http": True}},
        notifications={
            "source": "/acceld/test",
            "backoff_initial": 0.3,
            "targets": [{"name": "hook", "url": url, "secret": HOOK_SECRET}],
        },
        **extra,
    )


def event_of(received: Received) -> dict[str, Any]:
    """The CloudEvent, after checking its content type and signature."""
    assert received.headers["Content-Type"] == "application/cloudevents+json"
    expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(received.headers["X-Acceld-Signature"], expected)
    event: dict[str, Any] = json.loads(received.body)
    assert event["specversion"] == "1.0" and event["source"] == "/acceld/test"
    return event


def accepted_by_task(receiver: NotificationReceiver) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for received in receiver.accepted():
        event = event_of(received)
        found.setdefault(event["data"]["task_id"], []).append(event)
    return found


def deliveries(api: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    reply = api.get("/api/v1/notifications", params={"task_id": task_id})
    reply.raise_for_status()
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_one_signed_event_per_finished_task_after_two_500s(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    image = test_images.edge
    skopeo_copy(image.ref, f"docker://{registry_plain.host}/library/notify:v1", dest_registry=registry_plain)
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    with run_notification_receiver(fail_first=2) as receiver:
        config = notifying_config(tmp_path / "data", registry_plain, receiver.url)
        with (
            run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
            service.api() as api,
        ):
            events = [
                [resource(registry_plain.host, "library/notify", image.digest, "v1")],
                [resource(registry_plain.host, "library/notify-missing", missing, "v1")],
            ]
            ids = [
                post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
                for res in events
            ]
            tasks = {task_id: wait_finished(api, task_id) for task_id in ids}
            wait_for(
                lambda: all(
                    [d["status"] for d in deliveries(api, task_id)] == ["delivered"] for task_id in ids
                ),
                what="both notifications delivered",
            )
            views = {task_id: deliveries(api, task_id)[0] for task_id in ids}
            metrics = httpx.get(f"{service.url}/metrics").text
        assert 'acceld_notifications_total{outcome="delivered"} 2.0' in metrics
        assert 'acceld_notifications_total{outcome="retry"} 2.0' in metrics
        by_task = accepted_by_task(receiver)
        assert len(receiver.requests) == 4  # two refused, then one per task
    assert sorted(by_task) == sorted(ids) and all(len(events) == 1 for events in by_task.values())
    converted, failed = (by_task[task_id][0] for task_id in ids)
    assert tasks[ids[0]]["status"] == "succeeded" and tasks[ids[1]]["status"] == "failed"
    assert converted["type"] == "io.acceld.conversion.succeeded"
    assert converted["subject"] == ids[0]
    data = converted["data"]
    assert data["kind"] == "convert" and data["driver"] == "estargz"
    assert data["source"]["digest"] == image.digest
    assert data["target"]["digest"] == tasks[ids[0]]["target_digest"]
    assert data["source"]["size"] and data["target"]["size"] and data["duration_seconds"] is not None
    assert failed["type"] == "io.acceld.conversion.failed" and failed["data"]["error"]
    assert sum(view["attempts"] for view in views.values()) == 4
    for task_id, view in views.items():
        assert view["response_status"] == 204 and view["event_id"] == by_task[task_id][0]["id"]


def test_sender_killed_before_delivery_another_start_delivers_once(
    registry_plain: RunningRegistry, test_images: ImageSet, tmp_path: Path
) -> None:
    image = test_images.edge
    skopeo_copy(
        image.ref, f"docker://{registry_plain.host}/library/notify-kill:v1", dest_registry=registry_plain
    )
    with run_notification_receiver() as receiver:
        receiver.refuse = True
        config = notifying_config(tmp_path / "data", registry_plain, receiver.url)
        config_file = write_config(tmp_path / "acceld.yml", config)
        res = [resource(registry_plain.host, "library/notify-kill", image.digest, "v1")]
        with run_service(config_file, tmp_path / "serve-1.log") as service, service.api() as api:
            task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
            assert wait_finished(api, task_id)["status"] == "succeeded"
            wait_for(lambda: receiver.requests, what="a first (refused) delivery attempt")
            service.kill()  # kill -9: the task has ended, its notification is not delivered
        assert not receiver.accepted()
        receiver.refuse = False
        with run_service(config_file, tmp_path / "serve-2.log") as service, service.api() as api:
            wait_for(lambda: receiver.accepted(), what="the delivery after the restart")
            wait_for(
                lambda: [d["status"] for d in deliveries(api, task_id)] == ["delivered"],
                what="the delivery recorded",
            )
    (accepted,) = receiver.accepted()
    event = event_of(accepted)
    assert event["data"]["task_id"] == task_id
    assert {json.loads(r.body)["id"] for r in receiver.requests} == {event["id"]}  # one event, resent


def test_event_filter_and_unsigned_targets(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    missing = "sha256:" + hashlib.sha256(b"filtered").hexdigest()
    with run_notification_receiver() as failures, run_notification_receiver() as successes:
        config = service_config(
            tmp_path / "data",
            {registry_plain.host: {"plain_http": True}},
            notifications={
                "targets": [
                    {"name": "failures", "url": failures.url, "events": ["failed"]},
                    {"name": "successes", "url": successes.url, "events": ["succeeded"], "secret": "x"},
                ]
            },
        )
        with (
            run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
            service.api() as api,
        ):
            res = [resource(registry_plain.host, "library/notify-filter", missing, "v1")]
            task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
            assert wait_finished(api, task_id)["status"] == "failed"
            wait_for(lambda: failures.accepted(), what="the failure notification")
            (view,) = deliveries(api, task_id)
            assert view["target"] == "failures"
    assert not successes.requests
    (received,) = failures.accepted()
    assert "X-Acceld-Signature" not in received.headers
    assert json.loads(received.body)["type"] == "io.acceld.conversion.failed"


def test_redirects_are_not_followed(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    missing = "sha256:" + hashlib.sha256(b"redirected").hexdigest()
    with run_trap_server() as (trap, hits), run_notification_receiver() as receiver:
        receiver.redirect_to = f"http://{trap}/elsewhere"
        config = notifying_config(tmp_path / "data", registry_plain, receiver.url)
        with (
            run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service,
            service.api() as api,
        ):
            res = [resource(registry_plain.host, "library/notify-redirect", missing, "v1")]
            task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
            wait_finished(api, task_id)
            wait_for(
                lambda: any(d["attempts"] >= 2 for d in deliveries(api, task_id)), what="two attempts"
            )
            (view,) = deliveries(api, task_id)
    assert view["status"] == "pending" and view["response_status"] == 307
    assert "redirects are not followed" in view["error"]
    assert not hits  # neither the body nor its signature went to the redirect's target


def test_sigterm_lets_a_delivery_under_way_finish(registry_plain: RunningRegistry, tmp_path: Path) -> None:
    missing = "sha256:" + hashlib.sha256(b"slow receiver").hexdigest()
    with run_notification_receiver() as receiver:
        receiver.delay = 3.0
        config = notifying_config(tmp_path / "data", registry_plain, receiver.url)
        config_file = write_config(tmp_path / "acceld.yml", config)
        with run_service(config_file, tmp_path / "serve-1.log") as service, service.api() as api:
            res = [resource(registry_plain.host, "library/notify-sigterm", missing, "v1")]
            task_id = post_event(service.url, default_payload("PUSH_ARTIFACT", res)).json()["tasks"][0]["id"]
            wait_finished(api, task_id)
            wait_for(lambda: receiver.arrivals, what="the delivery to start")
            assert not receiver.requests  # not answered yet
            assert service.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        with run_service(config_file, tmp_path / "serve-2.log") as service, service.api() as api:
            (view,) = deliveries(api, task_id)
    assert (view["status"], view["attempts"]) == ("delivered", 1)
    assert len(receiver.requests) == 1
