"""The durable task store (SQLAlchemy Core; SQLite by default, PostgreSQL works the same way).

Tasks are claimed with a lease: a claim is an UPDATE whose WHERE clause re-checks that the row
is still claimable, so two workers (threads, processes or hosts) never run one task. A running
task whose lease expired (its server died) becomes claimable again. Deduplication is a unique
column holding a hash of (registry, repository, source, driver, options); a task whose source
was deleted releases its key (NULL), so a later push of the same digest converts again.

Several servers may share one PostgreSQL database (replicas): a claim there is a row lock that
skips rows other servers hold (`FOR UPDATE SKIP LOCKED`), new due work is announced with NOTIFY
in the transaction that makes it due, and periodic jobs run once per interval fleet-wide (a
schedule row updated only when due, under an advisory lock). SQLite serves one process.

A task's end (succeeded, skipped, finally failed) writes its notifications into the outbox in
the same transaction, so a notification is never lost nor sent for an end that was rolled back.

Tags are a property of a push, not of a conversion: an event for a further tag of a digest that
already has a conversion task gets a `tag` task instead (dedup key with the tag), which points the
tag's converted counterpart at that conversion's result once it exists (one manifest PUT).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from acceld.errors import AcceldError
from acceld.private import DIR_MODE, private_file

Status = Literal["queued", "running", "succeeded", "failed", "skipped", "cancelled"]
STATUSES: tuple[Status, ...] = ("queued", "running", "succeeded", "failed", "skipped", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "skipped", "cancelled"})
Kind = Literal["convert", "delete", "tag"]
_MAX_BOUND_VALUES = 500
metadata = MetaData()
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("dedup_key", String(64), unique=True, nullable=True),
    Column("status", String(16), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("registry", String(255), nullable=False),
    Column("repository", String(255), nullable=False),
    Column("tag", String(128), nullable=True),
    Column("source_digest", String(160), nullable=True),
    Column("driver", String(64), nullable=False),
    Column("options", Text, nullable=False),
    Column("platforms", Text, nullable=False),
    Column("operator", String(255), nullable=False),
    Column("events", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("target", Text, nullable=True),
    Column("target_digest", String(160), nullable=True),
    Column("source_size", BigInteger, nullable=True),
    Column("target_size", BigInteger, nullable=True),
    Column("seconds", Float, nullable=True),
    Column("layers_converted", Integer, nullable=True),
    Column("layers_cached", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("parent_id", String(32), nullable=True),  # tag task: the conversion it tags
    Column("note", Text, nullable=True),  # what a succeeded task did differently (e.g. pushed untagged)
    Column("destination", String(512), nullable=True),  # registry/repository of the results, if mapped
    Index("ix_tasks_claim", "status", "not_before"),
    Index("ix_tasks_created", "created_at"),
    Index("ix_tasks_source", "registry", "repository", "source_digest"),
    Index("ix_tasks_parent", "parent_id"),
)


schedule = Table(
    "schedule",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("next_run", Float, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("task_id", String(32), nullable=False),
    Column("target", String(200), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),
    Column("not_before", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_outbox_claim", "status", "not_before"),
    Index("ix_outbox_task", "task_id"),
)

TASKS_CHANNEL = "acceld_tasks"  # NOTIFY: a task became due
OUTBOX_CHANNEL = "acceld_outbox"  # NOTIFY: a notification is waiting


class StoreError(AcceldError):
    """The task database is unreachable or failed an operation."""

    transient = True


@dataclass(frozen=True)
class NewTask:
    """A task to enqueue; `source` is the digest, or the tag when the event carried no digest."""

    kind: Kind
    rule: str
    registry: str
    repository: str
    tag: str | None
    source_digest: str | None
    driver: str
    options: dict[str, Any]
    platforms: tuple[str, ...]
    options_key: str
    operator: str = ""
    not_before: float = 0.0
    destination: str | None = None  # `registry/repository` of the results when not the source's

    @property
    def dedup_key(self) -> str:
        source = self.source_digest or f"tag:{self.tag}"
        parts = [self.kind, self.registry, self.repository, source, self.driver, self.options_key]
        if self.kind == "tag":
            parts.append(self.tag or "")
        if self.destination:
            parts.append(f"to:{self.destination}")
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def tagging(self) -> NewTask:
        """The tag task giving an existing conversion of this digest the converted tag of this tag."""
        return dataclasses.replace(self, kind="tag", not_before=0.0)


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    status: str
    rule: str
    registry: str
    repository: str
    tag: str | None
    source_digest: str | None
    driver: str
    options: dict[str, Any]
    platforms: tuple[str, ...]
    operator: str
    events: int
    attempts: int
    max_attempts: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    target: str | None
    target_digest: str | None
    source_size: int | None
    target_size: int | None
    seconds: float | None
    layers_converted: int | None
    layers_cached: int | None
    error: str | None
    parent_id: str | None = None
    note: str | None = None
    destination: str | None = None
    dedup_key: str | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        base = f"{self.registry}/{self.repository}"
        if self.source_digest:
            return f"{base}@{self.source_digest}"
        return f"{base}:{self.tag}"

    @classmethod
    def from_row(cls, row: Any) -> Task:
        values = dict(row._mapping)
        values["options"] = json.loads(values["options"])
        values["platforms"] = tuple(json.loads(values["platforms"]))
        return cls(**values)


@dataclass(frozen=True)
class Enqueued:
    task_id: str
    status: str
    created: bool
    kind: str = "convert"


@dataclass(frozen=True)
class _Found:
    id: str
    kind: str
    status: str
    tag: str | None
    created: bool


@dataclass(frozen=True)
class Outcome:
    """What a finished attempt reports."""

    status: Literal["succeeded", "skipped"]
    source_digest: str | None = None
    target: str | None = None
    target_digest: str | None = None
    source_size: int | None = None
    target_size: int | None = None
    seconds: float | None = None
    layers_converted: int | None = None
    layers_cached: int | None = None
    reason: str | None = None  # why it was skipped
    note: str | None = None  # succeeded, with a remark (pushed untagged, found already converted)


@dataclass(frozen=True)
class OutboxEntry:
    """A notification to deliver about a task's end (one per target)."""

    target: str
    event_type: str
    body: str


@dataclass(frozen=True)
class Delivery:
    id: str
    task_id: str
    target: str
    event_type: str
    body: str
    status: str
    attempts: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    response_status: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        return cls(**dict(row._mapping))


@dataclass(frozen=True)
class TaskFilter:
    status: str | None = None
    registry: str | None = None
    repository: str | None = None
    driver: str | None = None
    kind: str | None = None


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is off; `_on_begin` emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
        # fail with SQLITE_BUSY on lock upgrade; read-only work opts out.
        mode = "DEFERRED" if connection.get_execution_options().get("readonly") else "IMMEDIATE"
        connection.exec_driver_sql(f"BEGIN {mode}")


def open_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    """An engine for `url`; for SQLite the directory is created and WAL mode switched on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database).expanduser()
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
                private_file(path)  # SQLite gives its -wal and -shm files the database's mode
            except OSError as exc:
                raise StoreError(f"cannot create the task database {path}: {exc.strerror}") from None
        engine = create_engine(url, pool_size=8, max_overflow=8)
        _configure_sqlite(engine, synchronous)
        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class TaskStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {self._dialect!r} (use sqlite or postgresql)")
        # SQLite has one writer at a time and its busy handler sleeps in steps of up to 100 ms;
        # queueing this process's writers on a lock instead keeps the webhook latency low.
        self._write_lock = threading.Lock() if self._dialect == "sqlite" else None
        # The notifications of a task's end (set by the service; none by default).
        self.outbox_entries: Callable[[Task], list[OutboxEntry]] = lambda _task: []

    @property
    def shared(self) -> bool:
        """True when several servers can share this database (PostgreSQL)."""
        return self._dialect == "postgresql"

    @classmethod
    def open(cls, url: str, *, synchronous: str = "FULL") -> TaskStore:
        store = cls(open_engine(url, synchronous=synchronous))
        store.create_schema()
        return store

    def create_schema(self) -> None:
        try:
            with self.engine.begin() as conn:
                if self._dialect == "postgresql":  # replicas starting together create it once
                    conn.execute(select(func.pg_advisory_xact_lock(_lock_key("schema"))))
                metadata.create_all(conn)
                self._add_missing_columns(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot initialise the task database: {_one_line(exc)}") from None

    def _add_missing_columns(self, conn: Connection) -> None:
        """A database made by an earlier version lacks the columns added since (all nullable)."""
        present = {column["name"] for column in inspect(conn).get_columns(tasks.name)}
        missing = [column for column in tasks.columns if column.name not in present]
        for column in missing:
            kind = column.type.compile(dialect=self.engine.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {tasks.name} ADD COLUMN {column.name} {kind}")
        if missing:
            for index in tasks.indexes:
                index.create(conn, checkfirst=True)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(select(1))

    # -- intake ---------------------------------------------------------------------------------

    def enqueue(
        self, new_tasks: Sequence[NewTask], max_attempts: int, now: float | None = None
    ) -> list[Enqueued]:
        """Insert the tasks in one transaction; an existing task with the same dedup key is kept
        (its `events` count grows). Returns, per input, the task that now stands for it."""
        return self.enqueue_groups([new_tasks], max_attempts, now)[0]

    def enqueue_groups(
        self, groups: Sequence[Sequence[NewTask]], max_attempts: int, now: float | None = None
    ) -> list[list[Enqueued]]:
        """`enqueue` for several callers at once: one transaction (one commit) for all groups."""
        flat = [t for group in groups for t in group]
        results = self._enqueue_flat(flat, max_attempts, time.time() if now is None else now)
        split: list[list[Enqueued]] = []
        for group in groups:
            split.append(results[: len(group)])
            results = results[len(group) :]
        return split

    def _enqueue_flat(self, new_tasks: Sequence[NewTask], max_attempts: int, now: float) -> list[Enqueued]:
        if not new_tasks:
            return []
        with self._write() as conn:
            found = self._insert(conn, new_tasks, [None] * len(new_tasks), max_attempts, now)
            # A further tag of a digest whose conversion task exists: a tag task, not a second conversion.
            further = [
                n
                for n, (new, row) in enumerate(zip(new_tasks, found, strict=True))
                if new.kind == "convert" and new.tag and not row.created and row.tag != new.tag
            ]
            if further:
                tag_tasks = [new_tasks[n].tagging() for n in further]
                parents: list[str | None] = [found[n].id for n in further]
                tagged = self._insert(conn, tag_tasks, parents, max_attempts, now)
                for n, row in zip(further, tagged, strict=True):
                    found[n] = row
            extra_events = Counter(row.id for row in found if not row.created)
            by_increment: dict[int, list[str]] = {}
            for task_id, increment in extra_events.items():
                by_increment.setdefault(increment, []).append(task_id)
            for increment, ids in by_increment.items():
                for chunk in _chunks(ids):
                    conn.execute(
                        update(tasks).where(tasks.c.id.in_(chunk)).values(events=tasks.c.events + increment)
                    )
            if any(row.created for row in found):
                self._notify(conn, TASKS_CHANNEL)
        return [Enqueued(row.id, row.status, row.created, row.kind) for row in found]

    def _insert(
        self,
        conn: Connection,
        new_tasks: Sequence[NewTask],
        parents: Sequence[str | None],
        max_attempts: int,
        now: float,
    ) -> list[_Found]:
        """Insert the tasks whose dedup key is new; per input, the task that stands for it."""
        keys = [t.dedup_key for t in new_tasks]
        rows = [
            {
                "id": uuid.uuid4().hex,
                "kind": t.kind,
                "dedup_key": t.dedup_key,
                "status": "queued",
                "rule": t.rule,
                "registry": t.registry,
                "repository": t.repository,
                "tag": t.tag,
                "source_digest": t.source_digest,
                "driver": t.driver,
                "options": json.dumps(t.options, sort_keys=True),
                "platforms": json.dumps(list(t.platforms)),
                "operator": t.operator,
                "events": 1,
                "attempts": 0,
                "max_attempts": max_attempts,
                "not_before": max(now, t.not_before),
                "created_at": now,
                "updated_at": now,
                "parent_id": parent,
                "destination": t.destination,
            }
            for t, parent in zip(new_tasks, parents, strict=True)
        ]
        insert = (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(tasks)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["dedup_key"]), rows)
        existing = {
            r.dedup_key: r
            for chunk in _chunks(sorted(set(keys)))
            for r in conn.execute(
                select(tasks.c.id, tasks.c.dedup_key, tasks.c.kind, tasks.c.status, tasks.c.tag).where(
                    tasks.c.dedup_key.in_(chunk)
                )
            )
        }
        fresh = {row["id"] for row in rows}
        found: list[_Found] = []
        for key in keys:
            row = existing[key]
            found.append(_Found(row.id, row.kind, row.status, row.tag, created=row.id in fresh))
            fresh.discard(row.id)  # a key repeated in this batch is created once
        return found

    def release_source(self, registry: str, repository: str, digest: str) -> list[Task]:
        """The source was deleted: finished conversion (and tag) tasks give up their dedup key (so a
        re-push converts again) and are returned, for deleting their results."""
        condition = and_(
            tasks.c.registry == registry,
            tasks.c.repository == repository,
            tasks.c.source_digest == digest,
            tasks.c.kind.in_(("convert", "tag")),
            tasks.c.status.in_(TERMINAL),
        )
        with self._write() as conn:
            released = [Task.from_row(r) for r in conn.execute(select(tasks).where(condition))]
            conn.execute(update(tasks).where(condition).values(dedup_key=None, updated_at=time.time()))
        return released

    # -- workers --------------------------------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float, now: float | None = None) -> Task | None:
        """Take the next due task (or one whose lease expired) and lease it to `owner`."""
        now = time.time() if now is None else now
        claimable = or_(
            and_(tasks.c.status == "queued", tasks.c.not_before <= now),
            and_(tasks.c.status == "running", tasks.c.lease_expires < now),
        )
        values = {
            "status": "running",
            "lease_owner": owner,
            "lease_expires": now + lease_seconds,
            "attempts": tasks.c.attempts + 1,
            "started_at": now,
            "updated_at": now,
        }
        oldest_first = (tasks.c.not_before, tasks.c.created_at)
        with self._write() as conn:
            if self._dialect == "postgresql":
                # The row lock is the claim: other servers skip the row instead of waiting for it.
                task_id = conn.execute(
                    select(tasks.c.id)
                    .where(claimable)
                    .order_by(*oldest_first)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).scalar_one_or_none()
                if task_id is None:
                    return None
                conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))
                return Task.from_row(conn.execute(select(tasks).where(tasks.c.id == task_id)).one())
            candidates = (
                conn.execute(select(tasks.c.id).where(claimable).order_by(*oldest_first).limit(8))
                .scalars()
                .all()
            )
            for candidate in candidates:
                claimed = conn.execute(
                    update(tasks).where(tasks.c.id == candidate, claimable).values(**values)
                )
                if claimed.rowcount == 1:
                    return Task.from_row(conn.execute(select(tasks).where(tasks.c.id == candidate)).one())
        return None

    def next_due(self) -> float | None:
        """When the next queued task becomes due or a running task's lease expires (epoch seconds)."""
        with self._read() as conn:
            queued = conn.execute(
                select(func.min(tasks.c.not_before)).where(tasks.c.status == "queued")
            ).scalar_one_or_none()
            leased = conn.execute(
                select(func.min(tasks.c.lease_expires)).where(tasks.c.status == "running")
            ).scalar_one_or_none()
        times = [float(t) for t in (queued, leased) if t is not None]
        return min(times) if times else None

    def heartbeat(self, task_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend the lease; False when the task is no longer ours (cancelled or taken over)."""
        now = time.time()
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == owner, tasks.c.status == "running")
                .values(lease_expires=now + lease_seconds, updated_at=now)
            )
        return result.rowcount == 1

    def complete(self, task_id: str, owner: str, outcome: Outcome) -> bool:
        """Record the outcome; a conversion that succeeded makes its waiting tag tasks due now."""
        now = time.time()
        values: dict[str, Any] = {
            "status": outcome.status,
            "finished_at": now,
            "updated_at": now,
            "lease_owner": None,
            "lease_expires": None,
            "error": outcome.reason,
            "note": outcome.note,
        }
        for name in (
            "source_digest",
            "target",
            "target_digest",
            "source_size",
            "target_size",
            "seconds",
            "layers_converted",
            "layers_cached",
        ):
            value = getattr(outcome, name)
            if value is not None:
                values[name] = value
        with self._write() as conn:
            finished = self._finish(conn, task_id, owner, values)
            if finished and outcome.status == "succeeded":
                woken = conn.execute(
                    update(tasks)
                    .where(tasks.c.parent_id == task_id, tasks.c.status.in_(("queued", "failed")))
                    .values(status="queued", attempts=0, not_before=now, updated_at=now, finished_at=None)
                )
                if woken.rowcount:
                    self._notify(conn, TASKS_CHANNEL)
            if finished:
                self._write_outbox(conn, task_id, now)
        return finished

    def wait_for_parent(self, task_id: str, owner: str, not_before: float) -> bool:
        """A tag task whose conversion is not finished: back to the queue without using an attempt
        (the conversion's success makes it due at once; `not_before` is the fallback)."""
        return self._finish_attempt(
            task_id,
            owner,
            {
                "status": "queued",
                "attempts": tasks.c.attempts - 1,
                "not_before": not_before,
                "updated_at": time.time(),
                "lease_owner": None,
                "lease_expires": None,
            },
        )

    def fail(self, task_id: str, owner: str, reason: str) -> bool:
        now = time.time()
        values = {
            "status": "failed",
            "error": reason,
            "finished_at": now,
            "updated_at": now,
            "lease_owner": None,
            "lease_expires": None,
        }
        with self._write() as conn:
            finished = self._finish(conn, task_id, owner, values)
            if finished:
                self._write_outbox(conn, task_id, now)
        return finished

    def _write_outbox(self, conn: Connection, task_id: str, now: float) -> None:
        task = Task.from_row(conn.execute(select(tasks).where(tasks.c.id == task_id)).one())
        entries = self.outbox_entries(task)
        if not entries:
            return
        conn.execute(
            outbox.insert(),
            [
                {
                    "id": uuid.uuid4().hex,
                    "task_id": task_id,
                    "target": entry.target,
                    "event_type": entry.event_type,
                    "body": entry.body,
                    "status": "pending",
                    "attempts": 0,
                    "not_before": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for entry in entries
            ],
        )
        self._notify(conn, OUTBOX_CHANNEL)

    def _notify(self, conn: Connection, channel: str) -> None:
        """PostgreSQL: wake the listening servers when this transaction commits."""
        if self._dialect == "postgresql":
            conn.execute(select(func.pg_notify(channel, "")))

    def retry_later(self, task_id: str, owner: str, reason: str, not_before: float) -> bool:
        return self._finish_attempt(
            task_id,
            owner,
            {
                "status": "queued",
                "error": reason,
                "not_before": not_before,
                "updated_at": time.time(),
                "lease_owner": None,
                "lease_expires": None,
            },
        )

    def requeue(self, task_id: str, owner: str) -> bool:
        """Give a claimed task back without counting the attempt (shutdown)."""
        return self._finish_attempt(
            task_id,
            owner,
            {
                "status": "queued",
                "attempts": tasks.c.attempts - 1,
                "updated_at": time.time(),
                "lease_owner": None,
                "lease_expires": None,
            },
        )

    def _finish_attempt(self, task_id: str, owner: str, values: dict[str, Any]) -> bool:
        with self._write() as conn:
            return self._finish(conn, task_id, owner, values)

    @staticmethod
    def _finish(conn: Connection, task_id: str, owner: str, values: dict[str, Any]) -> bool:
        result = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.lease_owner == owner, tasks.c.status == "running")
            .values(**values)
        )
        return result.rowcount == 1

    # -- management -----------------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        with self._read() as conn:
            row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one_or_none()
        return Task.from_row(row) if row is not None else None

    def list_tasks(self, filters: TaskFilter, limit: int, offset: int) -> tuple[list[Task], int]:
        """Newest first; returns the page and the total number of matching tasks."""
        conditions = [
            getattr(tasks.c, name) == value for name, value in vars(filters).items() if value is not None
        ]
        rows, total = self._newest_first(tasks, and_(True, *conditions), limit, offset)
        return [Task.from_row(r) for r in rows], total

    def retry(self, task_id: str) -> Task | None:
        """Queue a failed or cancelled task again with a fresh attempt budget; None if not allowed."""
        now = time.time()
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status.in_(("failed", "cancelled")))
                .values(
                    status="queued", attempts=0, not_before=now, updated_at=now, finished_at=None, error=None
                )
            )
            if result.rowcount != 1:
                return None
            self._notify(conn, TASKS_CHANNEL)
            return Task.from_row(conn.execute(select(tasks).where(tasks.c.id == task_id)).one())

    def cancel(self, task_id: str) -> Task | None:
        """Cancel a queued or running task (its worker notices at the next heartbeat); None if finished."""
        now = time.time()
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.status.in_(("queued", "running")))
                .values(
                    status="cancelled",
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires=None,
                    error="cancelled by request",
                )
            )
            if result.rowcount != 1:
                return None
            return Task.from_row(conn.execute(select(tasks).where(tasks.c.id == task_id)).one())

    def requeue_stale(self, task_id: str) -> bool:
        """Reconcile found no converted tag for this source: a failed or succeeded task runs again,
        and so does a tag task that was skipped (its tag pointed elsewhere then)."""
        now = time.time()
        again = or_(
            tasks.c.status.in_(("failed", "succeeded")),
            and_(tasks.c.kind == "tag", tasks.c.status == "skipped"),
        )
        with self._write() as conn:
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, again)
                .values(
                    status="queued",
                    attempts=0,
                    not_before=now,
                    updated_at=now,
                    finished_at=None,
                    events=tasks.c.events + 1,
                )
            )
            if result.rowcount == 1:
                self._notify(conn, TASKS_CHANNEL)
        return result.rowcount == 1

    def result_digests(self, registry: str, repository: str, digest: str, driver: str) -> list[str]:
        """Digests of the images converted from this source with `driver`."""
        with self._read() as conn:
            rows = (
                conn.execute(
                    select(tasks.c.target_digest).where(
                        tasks.c.registry == registry,
                        tasks.c.repository == repository,
                        tasks.c.source_digest == digest,
                        tasks.c.driver == driver,
                        tasks.c.kind == "convert",
                        tasks.c.status == "succeeded",
                        tasks.c.target_digest.is_not(None),
                    )
                )
                .scalars()
                .all()
            )
        return [str(d) for d in rows]

    def recent_tags(self, registry: str, repository: str, limit: int = 20) -> list[str]:
        """Tags of the latest tasks for a repository, newest first (where a pushed index likely is)."""
        with self._read() as conn:
            rows = conn.execute(
                select(tasks.c.tag, func.max(tasks.c.created_at).label("latest"))
                .where(
                    tasks.c.registry == registry, tasks.c.repository == repository, tasks.c.tag.is_not(None)
                )
                .group_by(tasks.c.tag)
                .order_by(func.max(tasks.c.created_at).desc())
                .limit(limit)
            ).all()
        return [str(row.tag) for row in rows]

    def purge_finished(self, before: float) -> int:
        """Delete finished tasks that finished before `before` (epoch seconds); returns how many."""
        with self._write() as conn:
            result = conn.execute(
                delete(tasks).where(tasks.c.status.in_(TERMINAL), tasks.c.finished_at < before)
            )
        return int(result.rowcount)

    def purge_deliveries(self, before: float) -> int:
        """Delete delivered or abandoned notifications older than `before`; returns how many."""
        with self._write() as conn:
            result = conn.execute(
                delete(outbox).where(outbox.c.status != "pending", outbox.c.updated_at < before)
            )
        return int(result.rowcount)

    # -- fleet-wide periodic jobs ---------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """PostgreSQL: True for the one server holding the advisory lock `name` (held during the
        block, released at its end or when this server's connection dies). SQLite: always True."""
        if self._dialect != "postgresql":
            yield True
            return
        key = _lock_key(name)
        try:
            conn = self.engine.connect()
            got = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar_one())
            conn.commit()
        except SQLAlchemyError as exc:
            raise StoreError(f"task database unavailable: {_one_line(exc)}") from None
        try:
            yield got
        finally:
            try:
                if got:
                    conn.execute(select(func.pg_advisory_unlock(key)))
                    conn.commit()
            except SQLAlchemyError:
                conn.invalidate()  # closing the session releases the lock
            finally:
                conn.close()

    def due(self, name: str, interval: float, *, first_run: float, now: float | None = None) -> bool:
        """True for exactly one caller per `interval` fleet-wide: the job `name` should run now.
        `first_run`: when a job never run before is first due."""
        now = time.time() if now is None else now
        insert = (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(schedule)
        with self._write() as conn:
            conn.execute(
                insert.on_conflict_do_nothing(index_elements=["name"]),
                [{"name": name, "next_run": first_run}],
            )
            result = conn.execute(
                update(schedule)
                .where(schedule.c.name == name, schedule.c.next_run <= now)
                .values(next_run=now + interval)
            )
        return result.rowcount == 1

    # -- notification outbox --------------------------------------------------------------------

    def claim_delivery(self, owner: str, lease_seconds: float, now: float | None = None) -> Delivery | None:
        """Take the next due notification (or one whose sender died) and lease it to `owner`."""
        now = time.time() if now is None else now
        claimable = and_(
            outbox.c.status == "pending",
            outbox.c.not_before <= now,
            or_(outbox.c.lease_expires.is_(None), outbox.c.lease_expires < now),
        )
        values = {"lease_owner": owner, "lease_expires": now + lease_seconds, "updated_at": now}
        with self._write() as conn:
            query = select(outbox.c.id).where(claimable).order_by(outbox.c.not_before).limit(1)
            if self._dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            delivery_id = conn.execute(query).scalar_one_or_none()
            if delivery_id is None:
                return None
            claimed = conn.execute(
                update(outbox).where(outbox.c.id == delivery_id, claimable).values(**values)
            )
            if claimed.rowcount != 1:
                return None
            return Delivery.from_row(conn.execute(select(outbox).where(outbox.c.id == delivery_id)).one())

    def delivered(self, delivery_id: str, owner: str, response_status: int) -> bool:
        now = time.time()
        values = {
            "status": "delivered",
            "attempts": outbox.c.attempts + 1,
            "delivered_at": now,
            "updated_at": now,
            "response_status": response_status,
            "error": None,
            "lease_owner": None,
            "lease_expires": None,
        }
        return self._finish_delivery(delivery_id, owner, values)

    def delivery_failed(
        self,
        delivery_id: str,
        owner: str,
        error: str,
        response_status: int | None,
        not_before: float | None,
    ) -> bool:
        """An attempt failed: try again at `not_before`, or give up when it is None."""
        values: dict[str, Any] = {
            "attempts": outbox.c.attempts + 1,
            "updated_at": time.time(),
            "response_status": response_status,
            "error": error,
            "lease_owner": None,
            "lease_expires": None,
        }
        if not_before is None:
            values["status"] = "failed"
        else:
            values["not_before"] = not_before
        return self._finish_delivery(delivery_id, owner, values)

    def _finish_delivery(self, delivery_id: str, owner: str, values: dict[str, Any]) -> bool:
        with self._write() as conn:
            result = conn.execute(
                update(outbox)
                .where(outbox.c.id == delivery_id, outbox.c.lease_owner == owner)
                .where(outbox.c.status == "pending")
                .values(**values)
            )
        return result.rowcount == 1

    def next_delivery_due(self) -> float | None:
        with self._read() as conn:
            due = conn.execute(
                select(func.min(func.coalesce(outbox.c.lease_expires, outbox.c.not_before))).where(
                    outbox.c.status == "pending"
                )
            ).scalar_one_or_none()
        return float(due) if due is not None else None

    def deliveries(self, task_id: str | None, limit: int, offset: int) -> tuple[list[Delivery], int]:
        """Notifications (of one task, or all), newest first; the page and the total."""
        where = and_(True, *([outbox.c.task_id == task_id] if task_id else []))
        rows, total = self._newest_first(outbox, where, limit, offset)
        return [Delivery.from_row(r) for r in rows], total

    def _newest_first(
        self, table: Table, where: ColumnElement[bool], limit: int, offset: int
    ) -> tuple[Sequence[Row[Any]], int]:
        """One page of `table`'s matching rows, newest first, and how many match in all."""
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(where)).scalar_one()
            rows = conn.execute(
                select(table)
                .where(where)
                .order_by(table.c.created_at.desc(), table.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return rows, int(total)

    def queued_count(self) -> int:
        """Tasks waiting to run (the intake's queue depth)."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).where(tasks.c.status == "queued")).scalar_one())

    def counts_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    # -- transactions ---------------------------------------------------------------------------

    def _write(self) -> _Transaction:
        return _Transaction(self.engine, readonly=False, lock=self._write_lock)

    def _read(self) -> _Transaction:
        return _Transaction(self.engine, readonly=True, lock=None)


class _Transaction:
    """`with` block = one transaction; database errors become a one-line StoreError."""

    def __init__(self, engine: Engine, *, readonly: bool, lock: threading.Lock | None) -> None:
        self._engine = engine
        self._readonly = readonly
        self._lock = lock
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        if self._lock is not None:
            self._lock.acquire()
        try:
            conn = self._engine.connect().execution_options(readonly=self._readonly)
            conn.begin()
        except SQLAlchemyError as exc:
            if self._lock is not None:
                self._lock.release()
            raise StoreError(f"task database unavailable: {_one_line(exc)}") from None
        self._conn = conn
        return conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if exc is None:
                conn.commit()
            else:
                conn.rollback()
        except SQLAlchemyError as error:
            raise StoreError(f"task database error: {_one_line(error)}") from None
        finally:
            conn.close()
            if self._lock is not None:
                self._lock.release()
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"task database error: {_one_line(exc)}") from None


def _lock_key(name: str) -> int:
    """The 64-bit PostgreSQL advisory lock key of `name`."""
    return int.from_bytes(hashlib.sha256(f"acceld:{name}".encode()).digest()[:8], "big", signed=True)


def _chunks(values: Sequence[str]) -> list[Sequence[str]]:
    """`values` in pieces small enough for one statement's bound parameters (SQLite allows 32766,
    older builds 999)."""
    return [values[i : i + _MAX_BOUND_VALUES] for i in range(0, len(values), _MAX_BOUND_VALUES)]


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
