"""Completion notifications: a CloudEvents 1.0 message per finished task and target, sent from the outbox.

The message is built when the task ends (in the transaction that ends it) and stored in the
outbox; senders (a few per replica) claim outbox rows with a lease, POST them, and retry failures
with exponential backoff. A replica that dies mid-delivery leaves a lease that expires, so another
replica (or its restart) sends the message: delivery is at least once, and receivers deduplicate
by the event's `id`. Redirects are never followed (the signature and body stay with the
configured URL). Conversions never wait for any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from acceld.service.config import NotificationSettings, NotificationTarget
from acceld.service.metrics import ServiceMetrics
from acceld.service.store import Delivery, OutboxEntry, StoreError, Task, TaskStore
from acceld.service.workers import idle_wait

log = logging.getLogger("acceld.service")
SIGNATURE_HEADER = "X-Acceld-Signature"
CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPE_PREFIX = "io.acceld.conversion."
_ERROR_CHARS = 500


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def cloud_event(task: Task, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 (structured JSON) message about a finished task."""
    finished = task.finished_at if task.finished_at is not None else time.time()
    converted = f"{task.registry}/{task.repository}@{task.target_digest}" if task.target_digest else None
    return {
        "specversion": "1.0",
        "id": uuid.uuid4().hex,
        "source": source,
        "type": EVENT_TYPE_PREFIX + task.status,
        "subject": task.id,
        "time": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {
            "task_id": task.id,
            "kind": task.kind,
            "status": task.status,
            "rule": task.rule,
            "driver": task.driver,
            "source": {
                "reference": task.source,
                "digest": task.source_digest,
                "tag": task.tag,
                "size": task.source_size,
            },
            "target": {
                "reference": task.target or converted,
                "digest": task.target_digest,
                "size": task.target_size,
            },
            "duration_seconds": task.seconds,
            "attempts": task.attempts,
            "error": task.error,
            "note": task.note,
        },
    }


class Notifier:
    """Builds the outbox entries of a task's end, and sends them."""

    def __init__(
        self,
        store: TaskStore,
        settings: NotificationSettings,
        secrets: dict[str, str | None],
        metrics: ServiceMetrics,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.targets: dict[str, NotificationTarget] = {t.name: t for t in settings.targets}
        self._secrets = secrets
        self.owner = uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._slots: list[asyncio.Task[None]] = []
        self._stopping = False
        self._client: httpx.AsyncClient | None = None
        self.listening: Callable[[], bool] = lambda: False
        self.poll_seconds = 1.0

    def entries_for(self, task: Task) -> list[OutboxEntry]:
        if task.status not in ("succeeded", "failed", "skipped"):
            return []
        wanted = [t.name for t in self.targets.values() if task.status in t.events]
        if not wanted:
            return []
        event = cloud_event(task, self.settings.source)
        body = json.dumps(event, separators=(",", ":"), sort_keys=True)
        return [OutboxEntry(name, event["type"], body) for name in wanted]

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False, timeout=self.settings.timeout_seconds, trust_env=False
        )
        self._slots = [
            asyncio.create_task(self._slot(), name=f"acceld-notify-{n}")
            for n in range(self.settings.concurrency)
        ]

    async def stop(self) -> None:
        """Stop claiming; a delivery under way gets its HTTP timeout to finish (else it is sent again
        by another sender once its lease expires)."""
        self._stopping = True
        self._wake.set()
        if self._slots:
            await asyncio.wait(self._slots, timeout=self.settings.timeout_seconds + 1)
        for slot in self._slots:
            slot.cancel()
        for slot in self._slots:
            with contextlib.suppress(asyncio.CancelledError):
                await slot
        if self._client is not None:
            await self._client.aclose()

    @property
    def lease_seconds(self) -> float:
        return self.settings.timeout_seconds * 3 + 10

    async def _slot(self) -> None:
        while not self._stopping:
            try:
                delivery = await asyncio.to_thread(self.store.claim_delivery, self.owner, self.lease_seconds)
            except StoreError as exc:
                log.warning("cannot claim notifications: %s", exc)
                delivery = None
            if delivery is None:
                if self._stopping:
                    break
                await idle_wait(self._wake, self.listening(), self.poll_seconds, self.store.next_delivery_due)
                continue
            try:
                await self._deliver(delivery)
            except StoreError as exc:  # the lease expires and it is sent again
                log.warning("notification %s: cannot record the attempt: %s", delivery.id, exc)
            except Exception:
                log.exception("notification %s: attempt failed unexpectedly", delivery.id)

    async def _deliver(self, delivery: Delivery) -> None:
        target = self.targets.get(delivery.target)
        if target is None:
            await asyncio.to_thread(
                self.store.delivery_failed,
                delivery.id,
                self.owner,
                f"target {delivery.target!r} is no longer configured",
                None,
                None,
            )
            return
        body = delivery.body.encode()
        headers = {"Content-Type": CONTENT_TYPE}
        secret = self._secrets.get(target.name)
        if secret:
            headers[SIGNATURE_HEADER] = signature(secret, body)
        assert self._client is not None
        status: int | None = None
        try:
            response = await self._client.post(target.url, content=body, headers=headers)
            status = response.status_code
            error = None if 200 <= status < 300 else f"HTTP {status}"
            if response.is_redirect:
                error = f"HTTP {status}: redirects are not followed"
        except httpx.HTTPError as exc:
            error = (str(exc) or type(exc).__name__).splitlines()[0][:_ERROR_CHARS]
        if error is None:
            assert status is not None
            await asyncio.to_thread(self.store.delivered, delivery.id, self.owner, status)
            self.metrics.notifications.labels("delivered").inc()
            return
        attempts = delivery.attempts + 1
        not_before = None
        if attempts < self.settings.max_attempts:
            not_before = time.time() + self._backoff(attempts)
            log.warning("notification %s to %s: %s; retrying", delivery.id, target.name, error)
        else:
            log.warning(
                "notification %s to %s: %s; giving up after %d attempts",
                delivery.id,
                target.name,
                error,
                attempts,
            )
        self.metrics.notifications.labels("failed" if not_before is None else "retry").inc()
        await asyncio.to_thread(
            self.store.delivery_failed, delivery.id, self.owner, error, status, not_before
        )

    def _backoff(self, attempts: int) -> float:
        base: float = min(
            self.settings.backoff_max, self.settings.backoff_initial * 2.0 ** max(attempts - 1, 0)
        )
        return base * random.uniform(0.9, 1.1)
