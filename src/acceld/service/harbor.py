"""Harbor webhook payloads (Default and CloudEvents formats) parsed into one event model.

Parsing is defensive: unknown keys are ignored, missing ones tolerated, and anything that does
not have the documented shape is a `PayloadError` (the webhook answers 400).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from acceld.errors import AcceldError
from acceld.oci.digest import is_digest

DEFAULT_CONTENT_TYPE = "application/json"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"

# CloudEvents `type` → Harbor event type.
CLOUDEVENT_TYPES = {
    "harbor.artifact.pushed": "PUSH_ARTIFACT",
    "harbor.artifact.pulled": "PULL_ARTIFACT",
    "harbor.artifact.deleted": "DELETE_ARTIFACT",
    "harbor.quota.exceeded": "QUOTA_EXCEED",
    "harbor.quota.warned": "QUOTA_WARNING",
    "harbor.replication.status.changed": "REPLICATION",
    "harbor.scan.failed": "SCANNING_FAILED",
    "harbor.scan.completed": "SCANNING_COMPLETED",
    "harbor.scan.stopped": "SCANNING_STOPPED",
    "harbor.tag_retention.finished": "TAG_RETENTION",
}

# The distribution grammar, matched whole (fullmatch) and in ASCII only: `$` would accept a
# trailing newline and a Unicode `\w` letters no registry accepts.
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?",
    re.ASCII,
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
MAX_REPOSITORY_LENGTH = 255
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)


class PayloadError(AcceldError):
    """A webhook body that is not a Harbor event of a supported format."""


@dataclass(frozen=True)
class Artifact:
    """One resource of an event: where it lives and how it was pushed."""

    registry: str  # host[:port], lower case
    repository: str  # full path, project included
    tag: str | None  # None for a digest-only push
    digest: str | None
    resource_url: str

    @property
    def project(self) -> str:
        return self.repository.split("/", 1)[0]


@dataclass(frozen=True)
class HarborEvent:
    type: str  # Harbor's name (PUSH_ARTIFACT …); CloudEvents types are mapped back
    operator: str
    artifacts: tuple[Artifact, ...]
    delivery_id: str | None = None  # the CloudEvents id


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Resource(_Loose):
    digest: str | None = None
    tag: str | None = None
    resource_url: str | None = None


class _EventData(_Loose):
    resources: list[_Resource] | None = None


class _DefaultPayload(_Loose):
    type: str
    operator: str | None = None
    event_data: _EventData | None = None


class _CloudEvent(_Loose):
    specversion: str
    id: str | None = None
    type: str
    operator: str | None = None
    data: _EventData | None = None


def media_type(content_type: str | None) -> str:
    """`Content-Type` without parameters, lower case."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_event(body: bytes, content_type: str | None) -> HarborEvent:
    """Parse a webhook body sent with `content_type`; raise PayloadError when it is not an event."""
    kind = media_type(content_type)
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("body is not valid JSON") from None
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
    if not isinstance(document, dict):
        raise PayloadError("body is not a JSON object")
    try:
        # Structured CloudEvents are recognised by `specversion` even when sent as plain JSON.
        if kind == CLOUDEVENTS_CONTENT_TYPE or "specversion" in document:
            event = _CloudEvent.model_validate(document)
            if event.specversion != "1.0":
                raise PayloadError(f"unsupported CloudEvents specversion {event.specversion!r}")
            harbor_type = CLOUDEVENT_TYPES.get(event.type, event.type)
            return _build(harbor_type, event.operator, event.data, event.id)
        payload = _DefaultPayload.model_validate(document)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise PayloadError(f"invalid event: {where}: {err['msg']}") from None
    return _build(payload.type, payload.operator, payload.event_data, None)


def _build(
    event_type: str, operator: str | None, data: _EventData | None, delivery_id: str | None
) -> HarborEvent:
    resources = (data.resources if data else None) or []
    artifacts = tuple(_artifact(r) for r in resources if r.resource_url)
    return HarborEvent(type=event_type, operator=operator or "", artifacts=artifacts, delivery_id=delivery_id)


def _artifact(resource: _Resource) -> Artifact:
    url = resource.resource_url or ""
    text = url.removeprefix("https://").removeprefix("http://")
    host, slash, path = text.partition("/")
    if not slash or not _HOST_RE.fullmatch(host):
        raise PayloadError(f"resource_url {url!r} does not start with a registry host")
    name, at, url_digest = path.partition("@")
    tag: str | None = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, _, tag = name.rpartition(":")
        if not _TAG_RE.fullmatch(tag):
            raise PayloadError(f"resource_url {url!r} has an invalid tag")
    elif not at:
        raise PayloadError(f"resource_url {url!r} has neither a tag nor a digest")
    if len(name) > MAX_REPOSITORY_LENGTH or not _REPOSITORY_RE.fullmatch(name):
        raise PayloadError(f"resource_url {url!r} has an invalid repository name")
    digest = resource.digest or url_digest or None
    for value in (resource.digest, url_digest):
        if value and not is_digest(value):
            raise PayloadError(f"invalid digest {value!r} for {url!r}")
    if resource.digest and url_digest and resource.digest != url_digest:
        raise PayloadError(f"digest {resource.digest} differs from the one in {url!r}")
    return Artifact(registry=host.lower(), repository=name, tag=tag, digest=digest, resource_url=url)


def example_payloads() -> dict[str, Any]:
    """Request examples for the OpenAPI document."""
    resource = {
        "digest": "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
        "tag": "latest",
        "resource_url": "harbor.example.com/library/debian:latest",
    }
    data = {
        "resources": [resource],
        "repository": {
            "name": "debian",
            "namespace": "library",
            "repo_full_name": "library/debian",
            "repo_type": "private",
        },
    }
    return {
        DEFAULT_CONTENT_TYPE: {
            "type": "PUSH_ARTIFACT",
            "occur_at": 1586922308,
            "operator": "admin",
            "event_data": data,
        },
        CLOUDEVENTS_CONTENT_TYPE: {
            "specversion": "1.0",
            "id": "0b7d1f5e-3c1a-4b7e-9f57-2f0f2d4c9a10",
            "source": "/projects/1/webhook/policies/1",
            "type": "harbor.artifact.pushed",
            "datacontenttype": "application/json",
            "time": "2020-04-15T03:45:08Z",
            "operator": "admin",
            "data": data,
        },
    }
