"""Response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from acceld.service.store import Delivery, Task

TaskStatus = Literal["queued", "running", "succeeded", "failed", "skipped", "cancelled"]
TaskKind = Literal["convert", "delete", "tag"]


class ErrorBody(BaseModel):
    code: str = Field(examples=["ERR_UNAUTHORIZED"])
    message: str


class AcceptedTask(BaseModel):
    id: str
    kind: TaskKind = Field(description="tag: a further tag of an image whose conversion task exists")
    status: TaskStatus
    created: bool = Field(description="false when an earlier event already queued this conversion")
    source: str
    driver: str


class IgnoredResource(BaseModel):
    resource_url: str
    reason: str


class WebhookReply(BaseModel):
    status: Literal["accepted", "ignored"]
    tasks: list[AcceptedTask] = []
    ignored: list[IgnoredResource] = []


class TaskView(BaseModel):
    id: str
    kind: TaskKind
    status: TaskStatus
    rule: str
    source: str
    registry: str
    repository: str
    tag: str | None
    source_digest: str | None
    driver: str
    options: dict[str, Any]
    platforms: list[str]
    operator: str
    events: int = Field(description="webhook deliveries and reconcile passes that asked for this task")
    attempts: int
    max_attempts: int
    created: dt.datetime
    updated: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    next_attempt: dt.datetime | None = Field(description="when a queued task becomes due")
    target: str | None
    target_digest: str | None
    source_size: int | None
    target_size: int | None
    seconds: float | None
    layers_converted: int | None
    layers_cached: int | None
    error: str | None
    parent_id: str | None = Field(description="tag tasks: the conversion task whose result they tag")
    note: str | None = Field(description="what a succeeded task did differently (e.g. pushed untagged)")
    destination: str | None = Field(description="registry/repository of the results when a rule maps them")

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(
            id=task.id,
            kind=task.kind,  # type: ignore[arg-type]  # the store only holds these kinds
            status=task.status,  # type: ignore[arg-type]
            rule=task.rule,
            source=task.source,
            registry=task.registry,
            repository=task.repository,
            tag=task.tag,
            source_digest=task.source_digest,
            driver=task.driver,
            options=task.options,
            platforms=list(task.platforms),
            operator=task.operator,
            events=task.events,
            attempts=task.attempts,
            max_attempts=task.max_attempts,
            created=_time(task.created_at),
            updated=_time(task.updated_at),
            started=_optional_time(task.started_at),
            finished=_optional_time(task.finished_at),
            next_attempt=_time(task.not_before) if task.status == "queued" else None,
            target=task.target,
            target_digest=task.target_digest,
            source_size=task.source_size,
            target_size=task.target_size,
            seconds=task.seconds,
            layers_converted=task.layers_converted,
            layers_cached=task.layers_cached,
            error=task.error,
            parent_id=task.parent_id,
            note=task.note,
            destination=task.destination,
        )


class TaskPage(BaseModel):
    items: list[TaskView]
    total: int
    limit: int
    offset: int


DeliveryStatus = Literal["pending", "delivered", "failed"]


class DeliveryView(BaseModel):
    """One notification about a finished task, to one target."""

    id: str
    task_id: str
    target: str = Field(description="the notification target's name")
    type: str = Field(description="the CloudEvents type, io.acceld.conversion.<status>")
    event_id: str = Field(description="the CloudEvents id (receivers deduplicate by it)")
    status: DeliveryStatus
    attempts: int
    next_attempt: dt.datetime | None
    created: dt.datetime
    updated: dt.datetime
    delivered: dt.datetime | None
    response_status: int | None = Field(description="HTTP status of the last attempt")
    error: str | None = Field(description="why the last attempt failed")

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        return cls(
            id=delivery.id,
            task_id=delivery.task_id,
            target=delivery.target,
            type=delivery.event_type,
            event_id=str(json.loads(delivery.body).get("id", "")),
            status=delivery.status,  # type: ignore[arg-type]  # the store only holds these
            attempts=delivery.attempts,
            next_attempt=_time(delivery.not_before) if delivery.status == "pending" else None,
            created=_time(delivery.created_at),
            updated=_time(delivery.updated_at),
            delivered=_optional_time(delivery.delivered_at),
            response_status=delivery.response_status,
            error=delivery.error,
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryView]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
    database: str | None = Field(
        default=None, description="the task database: sqlite or postgresql (readiness only)"
    )


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _optional_time(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else _time(epoch)
