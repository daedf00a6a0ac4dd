"""`POST /api/v1/conversions`: Harbor's webhook. Answers fast: check, plan, commit tasks, reply 202.

Order of checks: a known secret (401), the content type (415), the body size (413), the
payload (400), every resource on a configured source (403), the secret of that source (401).
Nothing here contacts a registry: the payload alone decides what is queued.

The route is a plain Starlette route, described in the OpenAPI document by `openapi_operation`:
FastAPI's per-request machinery (dependencies, response models) cost about a third of the
intake's CPU time.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route

from acceld.service.api_models import AcceptedTask, ErrorBody, IgnoredResource, WebhookReply
from acceld.service.harbor import (
    CLOUDEVENTS_CONTENT_TYPE,
    DEFAULT_CONTENT_TYPE,
    PayloadError,
    example_payloads,
    media_type,
    parse_event,
)
from acceld.service.intake import plan_event
from acceld.service.state import Service
from acceld.service.store import StoreError

WEBHOOK_PATH = "/api/v1/conversions"
WEBHOOK_SECURITY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": "The target's auth_header value from the Harbor webhook policy, verbatim",
}

_RESOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "digest": {"type": ["string", "null"]},
        "tag": {"type": ["string", "null"]},
        "resource_url": {"type": ["string", "null"]},
    },
}
_DATA_SCHEMA: dict[str, Any] = {  # null stands for an absent key, as Go's encoder may write it
    "type": ["object", "null"],
    "properties": {
        "resources": {"type": ["array", "null"], "items": _RESOURCE_SCHEMA},
        "repository": {"type": ["object", "null"]},
    },
}
_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        DEFAULT_CONTENT_TYPE: {
            "schema": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string"},
                    "occur_at": {"type": "integer"},
                    "operator": {"type": ["string", "null"]},
                    "event_data": _DATA_SCHEMA,
                },
            },
            "example": example_payloads()[DEFAULT_CONTENT_TYPE],
        },
        CLOUDEVENTS_CONTENT_TYPE: {
            "schema": {
                "type": "object",
                "required": ["specversion", "type"],
                "properties": {
                    "specversion": {"type": "string", "enum": ["1.0"]},  # parse_event refuses others
                    "id": {"type": "string"},
                    "type": {"type": "string"},
                    "source": {"type": "string"},
                    "time": {"type": "string"},
                    "operator": {"type": ["string", "null"]},
                    "data": _DATA_SCHEMA,
                },
            },
            "example": example_payloads()[CLOUDEVENTS_CONTENT_TYPE],
        },
    },
}
_RESPONSES = (
    (202, WebhookReply, "Accepted: the tasks are committed"),
    (200, WebhookReply, "Acknowledged, nothing to convert"),
    (400, ErrorBody, "Malformed payload"),
    (401, ErrorBody, "Missing or wrong Authorization header"),
    (403, ErrorBody, "A resource is not on a configured source registry"),
    (
        413,
        ErrorBody,
        "Body larger than server.max_body_bytes, or more resources than webhook.max_resources_per_event",
    ),
    (415, ErrorBody, "Content-Type is neither application/json nor application/cloudevents+json"),
    (429, ErrorBody, "More than webhook.max_queued_tasks tasks queued: retry after Retry-After seconds"),
    (503, ErrorBody, "Task store unavailable; the event was not accepted (Harbor retries)"),
)


def openapi_operation(schemas: dict[str, Any]) -> dict[str, Any]:
    """The webhook's OpenAPI operation; the models it uses are added to `schemas` (components)."""

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    return {
        "tags": ["webhook"],
        "summary": "Harbor webhook (Default or CloudEvents payload)",
        "operationId": "receive_webhook",
        "requestBody": _REQUEST_BODY,
        "security": [{"HarborWebhookAuth": []}],
        "responses": {
            str(status): {"description": text, "content": {"application/json": {"schema": ref(model)}}}
            for status, model, text in _RESPONSES
        },
    }


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (without reading more than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def webhook_route(service: Service) -> Route:
    count = service.metrics.webhook_requests

    def reject(
        outcome: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        count.labels(outcome).inc()
        return error(status, code, message, headers)

    async def receive_webhook(request: Request) -> JSONResponse:
        authorization = request.headers.get("authorization", "")
        if not service.webhook_caller_known(authorization):
            return reject("unauthorized", 401, "ERR_UNAUTHORIZED", "missing or wrong Authorization header")
        content_type = media_type(request.headers.get("content-type"))
        if content_type not in (DEFAULT_CONTENT_TYPE, CLOUDEVENTS_CONTENT_TYPE):
            return reject(
                "unsupported_media_type",
                415,
                "ERR_UNSUPPORTED_MEDIA_TYPE",
                f"content type must be {DEFAULT_CONTENT_TYPE} or {CLOUDEVENTS_CONTENT_TYPE}",
            )
        limit = service.config.server.max_body_bytes
        try:
            body = await _read_body(request, limit)
        except ClientDisconnect:  # gone, or closed for sending too slowly (server.body_timeout)
            count.labels("disconnected").inc()
            return error(408, "ERR_TIMEOUT", "the request body did not arrive")
        if body is None:
            return reject("too_large", 413, "ERR_PAYLOAD_TOO_LARGE", f"body larger than {limit} bytes")
        try:
            event = parse_event(body, content_type)
        except PayloadError as exc:
            return reject("bad_request", 400, "ERR_ILLEGAL_PARAMETER", str(exc))
        settings = service.config.webhook
        if len(event.artifacts) > settings.max_resources_per_event:
            return reject(
                "too_large",
                413,
                "ERR_PAYLOAD_TOO_LARGE",
                f"event lists {len(event.artifacts)} resources, more than "
                f"webhook.max_resources_per_event ({settings.max_resources_per_event})",
            )
        for artifact in event.artifacts:
            if artifact.registry not in service.webhook_sources:
                return reject(
                    "forbidden",
                    403,
                    "ERR_FORBIDDEN",
                    f"registry {artifact.registry} is not a configured webhook source",
                )
            if not service.webhook_allowed(authorization, artifact.registry):
                return reject(
                    "unauthorized",
                    401,
                    "ERR_UNAUTHORIZED",
                    f"wrong Authorization header for registry {artifact.registry}",
                )
        plan = plan_event(
            event, service.rules, service.own_operators, service.config.workers.child_grace_seconds
        )
        try:
            if plan.tasks and await service.queue_depth.current() >= settings.max_queued_tasks:
                return reject(
                    "queue_full",
                    429,
                    "ERR_TOO_MANY_REQUESTS",
                    f"more than webhook.max_queued_tasks ({settings.max_queued_tasks}) tasks are queued",
                    {"Retry-After": str(settings.retry_after_seconds)},
                )
            for artifact in plan.deleted_sources:
                assert artifact.digest is not None
                await asyncio.to_thread(
                    service.store.release_source, artifact.registry, artifact.repository, artifact.digest
                )
            enqueued = await service.intake.enqueue(plan.tasks)
        except StoreError as exc:
            return reject("unavailable", 503, "ERR_UNAVAILABLE", str(exc))
        if any(e.created for e in enqueued):
            service.pool.wake()
        reply = WebhookReply(
            status="accepted" if enqueued else "ignored",
            tasks=[
                AcceptedTask.model_validate(
                    {
                        "id": e.task_id,
                        "kind": e.kind,
                        "status": e.status,
                        "created": e.created,
                        "source": _source(t.registry, t.repository, t.source_digest, t.tag),
                        "driver": t.driver,
                    }
                )
                for e, t in zip(enqueued, plan.tasks, strict=True)
            ],
            ignored=[IgnoredResource(resource_url=url, reason=reason) for url, reason in plan.ignored],
        )
        if not enqueued:
            count.labels("ignored").inc()
            return JSONResponse(reply.model_dump(mode="json"), status_code=200)
        count.labels("accepted" if any(e.created for e in enqueued) else "duplicate").inc()
        return JSONResponse(reply.model_dump(mode="json"), status_code=202)

    return Route(WEBHOOK_PATH, receive_webhook, methods=["POST"])


def _source(registry: str, repository: str, digest: str | None, tag: str | None) -> str:
    return f"{registry}/{repository}" + (f"@{digest}" if digest else f":{tag}")
