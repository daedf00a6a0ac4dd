"""The worker pool: claims due tasks and runs each attempt in its own process.

A crash, a hang or a kill of a job process never touches the server; a killed server leaves
running tasks with a lease that expires, so another (or the restarted) server runs them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from acceld.config import RegistryConfig
from acceld.formats.limits import DEFAULT_LIMITS, Limits
from acceld.service.config import WorkerSettings
from acceld.service.job import JobResult, JobSpec
from acceld.service.metrics import ServiceMetrics
from acceld.service.store import Outcome, StoreError, Task, TaskStore

log = logging.getLogger("acceld.service")
_PARENT_RECHECK_SECONDS = 30.0  # a tag task waiting for its conversion looks again at the latest then
SLOW_POLL_SECONDS = 30.0  # while NOTIFY wakes idle slots, they still look this often


async def idle_wait(
    wake: asyncio.Event, listening: bool, poll_seconds: float, next_due: Callable[[], float | None]
) -> None:
    """Wait for `wake`: at most `poll_seconds`, or, while LISTEN/NOTIFY announces new work, until
    the next known due time (delayed retries, expiring leases) or the slow fallback poll."""
    wake.clear()
    timeout = poll_seconds
    if listening:
        try:
            due = await asyncio.to_thread(next_due)
        except StoreError:
            due = None
        timeout = max(poll_seconds, SLOW_POLL_SECONDS)
        if due is not None:
            timeout = min(timeout, max(due - time.time(), poll_seconds))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout)


def backoff_delay(settings: WorkerSettings, attempts: int) -> float:
    """Exponential backoff after `attempts` failed attempts, ±10 % jitter."""
    base: float = min(settings.backoff_max, settings.backoff_initial * 2.0 ** max(attempts - 1, 0))
    return base * random.uniform(0.9, 1.1)


class WorkerPool:
    def __init__(
        self,
        store: TaskStore,
        settings: WorkerSettings,
        registries: dict[str, RegistryConfig],
        metrics: ServiceMetrics,
        cache_dir: Path | None = None,
        job_command: Callable[[], list[str]] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.limits = limits
        self.store = store
        self.settings = settings
        self.registries = registries
        self.metrics = metrics
        self.cache_dir = cache_dir
        self.owner = uuid.uuid4().hex
        self._job_command = job_command or (lambda: [sys.executable, "-m", "acceld.service.job"])
        self._wake = asyncio.Event()
        self._stopping = False
        self._slots: list[asyncio.Task[None]] = []
        self._jobs: dict[str, asyncio.subprocess.Process] = {}
        self._killed_at_shutdown: set[str] = set()
        self.started = False
        self.listening: Callable[[], bool] = lambda: False  # LISTEN/NOTIFY connected

    def start(self) -> None:
        self._slots = [
            asyncio.create_task(self._slot(), name=f"acceld-worker-{n}")
            for n in range(self.settings.concurrency)
        ]
        self.started = True

    def wake(self) -> None:
        """New work was queued: idle slots look now instead of at their next poll."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming; give running jobs `grace` seconds, then kill them and requeue their tasks."""
        self._stopping = True
        self._wake.set()
        if not self._slots:
            return
        _, pending = await asyncio.wait(self._slots, timeout=grace)
        for task_id, process in list(self._jobs.items()):
            self._killed_at_shutdown.add(task_id)
            kill_job(process)
        if pending:
            await asyncio.wait(pending, timeout=10)
        self.started = False

    async def _slot(self) -> None:
        while not self._stopping:
            try:
                task = await asyncio.to_thread(self.store.claim, self.owner, self.settings.lease_seconds)
            except StoreError as exc:
                log.warning("cannot claim tasks: %s", exc)
                task = None
            if task is None:
                await self._idle()
                continue
            if self._stopping:
                await asyncio.to_thread(self.store.requeue, task.id, self.owner)
                break
            try:
                await self._attempt(task)
            except StoreError as exc:  # the lease expires and another attempt follows
                log.warning("task %s: cannot record the attempt: %s", task.id, exc)
            except Exception:  # a bug must not stop this slot; the lease expires and the task runs again
                log.exception("task %s: attempt failed unexpectedly", task.id)

    async def _idle(self) -> None:
        await idle_wait(self._wake, self.listening(), self.settings.poll_seconds, self.store.next_due)

    async def _spec(self, task: Task, converted_digest: str | None = None) -> JobSpec:
        """The job's input, with what only the task store knows about the repository."""
        known_targets: list[str] = []
        recent_tags: list[str] = []
        if task.kind == "delete" and task.source_digest:
            known_targets = await asyncio.to_thread(
                self.store.result_digests, task.registry, task.repository, task.source_digest, task.driver
            )
        if task.kind == "convert" and task.tag is None:
            recent_tags = await asyncio.to_thread(self.store.recent_tags, task.registry, task.repository)
        return JobSpec(
            kind=task.kind,  # type: ignore[arg-type]  # the store only holds the three kinds
            registry=task.registry,
            repository=task.repository,
            tag=task.tag,
            source_digest=task.source_digest,
            driver=task.driver,
            options=task.options,
            platforms=list(task.platforms),
            registries=self.registries,
            limits=self.limits,
            cache_dir=self.cache_dir,
            known_targets=known_targets,
            recent_tags=recent_tags,
            converted_digest=converted_digest,
            destination=task.destination,
        )

    async def _attempt(self, task: Task) -> None:
        converted_digest = None
        if task.kind == "tag":
            converted_digest = await self._converted_digest(task)
            if converted_digest is None:
                return
        spec = await self._spec(task, converted_digest)
        log.info(
            "task %s: attempt %d of %s %s (%s)", task.id, task.attempts, task.kind, task.source, task.driver
        )
        started = time.monotonic()
        result, lost = await self._run_job(task, spec)
        elapsed = time.monotonic() - started
        if lost:
            log.info("task %s: cancelled or taken over; attempt abandoned", task.id)
            return
        if task.id in self._killed_at_shutdown:
            await asyncio.to_thread(self.store.requeue, task.id, self.owner)
            log.info("task %s: requeued at shutdown", task.id)
            return
        if result is None:
            result = JobResult(status="failed", transient=True, reason="conversion process died")
        await self._record(task, result, elapsed)

    async def _converted_digest(self, task: Task) -> str | None:
        """The result a tag task points its tag at; None when the task was put back or ended here
        because its conversion has not succeeded (yet)."""
        parent = await asyncio.to_thread(self.store.get, task.parent_id) if task.parent_id else None
        if parent is not None and parent.status in ("queued", "running"):
            not_before = time.time() + max(self.settings.poll_seconds, _PARENT_RECHECK_SECONDS)
            await asyncio.to_thread(self.store.wait_for_parent, task.id, self.owner, not_before)
            return None
        if parent is not None and parent.status == "succeeded" and parent.target_digest:
            return parent.target_digest
        if parent is None:
            reason = "its conversion task no longer exists"
            await asyncio.to_thread(self.store.fail, task.id, self.owner, reason)
        elif parent.status == "skipped":
            outcome = Outcome(status="skipped", reason=f"the conversion was skipped: {parent.error}")
            await asyncio.to_thread(self.store.complete, task.id, self.owner, outcome)
        else:
            reason = f"the conversion {parent.status} (task {parent.id}): {parent.error}"
            await asyncio.to_thread(self.store.fail, task.id, self.owner, reason)
        return None

    async def _run_job(self, task: Task, spec: JobSpec) -> tuple[JobResult | None, bool]:
        """Run the job process with heartbeats; (result or None if it died, lease lost?)."""
        process = await asyncio.create_subprocess_exec(
            *self._job_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Its own session and process group: terminal signals reach the server only, and
            # killing the group kills the layer workers the job started along with it.
            start_new_session=True,
        )
        self._jobs[task.id] = process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(spec.model_dump_json().encode() + b"\n")
            with contextlib.suppress(ConnectionError):  # the job died at once: its exit status tells
                await process.stdin.drain()
            output = asyncio.create_task(process.stdout.read())
            deadline = time.monotonic() + self.settings.job_timeout
            interval = max(self.settings.lease_seconds / 3, 0.2)
            while True:
                done, _ = await asyncio.wait({output}, timeout=interval)
                if done:
                    break
                still_ours = await asyncio.to_thread(
                    self.store.heartbeat, task.id, self.owner, self.settings.lease_seconds
                )
                if not still_ours:
                    kill_job(process)
                    await process.wait()
                    return None, True
                if time.monotonic() > deadline:
                    kill_job(process)
                    await process.wait()
                    minutes = self.settings.job_timeout / 60
                    return JobResult(
                        status="failed",
                        transient=True,
                        reason=f"conversion timed out after {minutes:g} minutes",
                    ), False
            await process.wait()
            return _parse_result(output.result(), process.returncode), False
        finally:
            self._jobs.pop(task.id, None)
            kill_job(process)  # however the job ended, nothing it started outlives it
            if process.returncode is None:
                await process.wait()
            with contextlib.suppress(Exception):
                process.stdin.close()

    async def _record(self, task: Task, result: JobResult, elapsed: float) -> None:
        outcome_label = result.status if result.status != "failed" or not result.transient else "retry"
        self.metrics.conversion_seconds.labels(task.driver, outcome_label).observe(elapsed)
        if result.status == "failed":
            reason = result.reason or "unknown error"
            if result.transient and task.attempts < task.max_attempts:
                delay = backoff_delay(self.settings, task.attempts)
                log.warning(
                    "task %s: attempt %d failed, retrying in %.0f s: %s",
                    task.id,
                    task.attempts,
                    delay,
                    reason,
                )
                await asyncio.to_thread(
                    self.store.retry_later, task.id, self.owner, reason, time.time() + delay
                )
                return
            if result.transient:
                reason = f"gave up after {task.attempts} attempts: {reason}"
            log.warning("task %s failed: %s", task.id, reason)
            await asyncio.to_thread(self.store.fail, task.id, self.owner, reason)
            return
        if result.status == "succeeded" and result.source_size is not None and result.target_size is not None:
            self.metrics.source_bytes.labels(task.driver).observe(result.source_size)
            self.metrics.target_bytes.labels(task.driver).observe(result.target_size)
        log.info("task %s %s: %s", task.id, result.status, result.target or result.reason or "")
        outcome = Outcome(
            status=result.status,
            source_digest=result.source_digest,
            target=result.target,
            target_digest=result.target_digest,
            source_size=result.source_size,
            target_size=result.target_size,
            seconds=result.seconds,
            layers_converted=result.layers_converted,
            layers_cached=result.layers_cached,
            reason=result.reason,
            note=result.note,
        )
        await asyncio.to_thread(self.store.complete, task.id, self.owner, outcome)


def kill_job(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the job's process group: the job, its fork server and its layer workers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _parse_result(output: bytes, returncode: int | None) -> JobResult | None:
    try:
        return JobResult.model_validate_json(output)
    except ValidationError:
        if returncode is not None and returncode < 0:
            return JobResult(
                status="failed", transient=True, reason=f"conversion process killed by signal {-returncode}"
            )
        if returncode:
            return JobResult(
                status="failed", transient=True, reason=f"conversion process exited with code {returncode}"
            )
        return None
