"""The YAML configuration of `acceld serve`: the registry config plus server, webhook, queue and rules.

Every section has defaults, so an empty file (or none) runs a service on 127.0.0.1:2077 with its
state in SQLite under the data directory. Secrets come from the file itself, a file
(`*_file`) or an environment variable (`*_env`); exactly one source per secret.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from acceld.config import AcceldConfig, ConfigError, load_yaml_model
from acceld.private import private_dir

DEFAULT_PORT = 2077
EventType = Literal["PUSH_ARTIFACT", "PULL_ARTIFACT", "SCANNING_COMPLETED"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_secret(label: str, value: str | None, file: Path | None, env: str | None) -> str | None:
    """The secret from whichever of value/file/env is set; None when none is; ConfigError if unreadable."""
    if sum(x is not None for x in (value, file, env)) > 1:
        raise ConfigError(f"{label}: set only one of the value, its _file or its _env form")
    if value is not None:
        return value
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read {file}: {exc.strerror}") from None
    if env is not None:
        found = os.environ.get(env)
        if found is None:
            raise ConfigError(f"{label}: environment variable {env} is not set")
        return found
    return None


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Seconds uvicorn waits for open requests on SIGTERM before the worker pool stops.
    graceful_timeout: float = Field(default=10.0, gt=0)
    # Slow or idle clients (slowloris): a request's line and headers must arrive within
    # header_timeout, its body within body_timeout after them; idle keep-alive connections close
    # after keep_alive_timeout; past max_connections the oldest connection without a request in
    # progress is closed.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, ge=1)
    max_header_bytes: int = Field(default=65536, ge=4096)
    max_connections: int = Field(default=4096, ge=16)


class DatabaseSettings(_Section):
    """SQLAlchemy URL; default `sqlite:///<data_dir>/acceld.db`."""

    url: str | None = None
    url_file: Path | None = None
    url_env: str | None = None
    # Finished tasks older than this are deleted (hourly); 0 keeps them forever.
    retention_days: float = Field(default=30.0, ge=0)


class ApiSettings(_Section):
    """Bearer token of the management API; default: generated once into `<data_dir>/api-token`."""

    token: str | None = None
    token_file: Path | None = None
    token_env: str | None = None


class WebhookSource(_Section):
    """A registry whose webhooks are accepted: the exact `Authorization` value Harbor sends."""

    auth_header: str | None = None
    auth_header_file: Path | None = None
    auth_header_env: str | None = None


class WebhookSettings(_Section):
    sources: dict[str, WebhookSource] = {}
    # Operators whose pushes are never converted, in addition to every configured registry username.
    ignore_operators: list[str] = []
    # Harbor sends one resource per event; more is refused (400) before anything is queued.
    max_resources_per_event: int = Field(default=100, ge=1)
    # Past this many queued tasks new events are answered 429 with Retry-After (Harbor retries).
    max_queued_tasks: int = Field(default=10000, ge=1)
    retry_after_seconds: int = Field(default=60, ge=1)


class WorkerSettings(_Section):
    concurrency: int = Field(default=2, ge=0, le=64)  # 0: intake only (another instance converts)
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial: float = Field(default=5.0, gt=0)
    backoff_max: float = Field(default=600.0, gt=0)
    lease_seconds: float = Field(default=60.0, ge=1)
    poll_seconds: float = Field(default=1.0, gt=0)
    job_timeout: float = Field(default=3600.0, gt=0)
    # Digest-only pushes wait this long so the index they belong to can arrive first.
    child_grace_seconds: float = Field(default=10.0, ge=0)
    # On SIGTERM running conversions get this long to finish before they are killed and requeued.
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)


class SyncSettings(_Section):
    interval_seconds: float = Field(default=0.0, ge=0)  # 0 = no periodic reconcile
    catalog: bool = True  # list repositories with /v2/_catalog when patterns need it
    max_tags_per_repository: int = Field(default=1000, ge=1)


NotificationEvent = Literal["succeeded", "failed", "skipped"]


class NotificationTarget(_Section):
    """Where a CloudEvent about each finished task is POSTed (signed when a secret is set)."""

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    events: list[NotificationEvent] = ["succeeded", "failed", "skipped"]


class NotificationSettings(_Section):
    targets: list[NotificationTarget] = []
    source: str = Field(default="/acceld", min_length=1)  # the CloudEvents `source` attribute
    max_attempts: int = Field(default=12, ge=1)
    backoff_initial: float = Field(default=5.0, gt=0)
    backoff_max: float = Field(default=3600.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)
    concurrency: int = Field(default=2, ge=1, le=32)

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[NotificationTarget]) -> list[NotificationTarget]:
        names = [t.name for t in targets]
        if len(names) != len(set(names)):
            raise ValueError("notification target names must be unique")
        return targets


class DriverSpec(_Section):
    name: str
    options: dict[str, Any] = {}


TARGET_FIELDS = ("registry", "project", "repository", "name")


class TargetConfig(_Section):
    """Where a rule's results go instead of the source repository. Templates over the source's
    `{registry}`, `{project}`, `{repository}` (the full path) and `{name}` (the path after the
    project), e.g. `repository: "{project}-accel/{name}"`. Results outside the source repository
    carry no `subject` (it must be in the same repository) but name their source in annotations."""

    registry: str = "{registry}"
    repository: str = "{repository}"

    @field_validator("registry", "repository")
    @classmethod
    def _valid_template(cls, template: str) -> str:
        try:
            rendered = template.format(**dict.fromkeys(TARGET_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            known = ", ".join(f"{{{name}}}" for name in TARGET_FIELDS)
            raise ValueError(f"bad template {template!r} ({exc}); it may use {known}") from None
        if not rendered:
            raise ValueError("an empty template")
        return template


class RuleConfig(_Section):
    """Which pushes to convert and into what. Patterns are globs (`*` within a path segment,
    `**` across segments) or regular expressions written `re:<pattern>` (full match)."""

    name: str
    registries: list[str] = []  # empty: every webhook source
    projects: list[str] = ["**"]
    repositories: list[str] = ["**"]  # full repository path, project included
    tags: list[str] = ["**"]
    untagged: bool = True  # digest-only pushes (not children of an index) are converted too
    events: list[EventType] = ["PUSH_ARTIFACT"]
    platforms: list[str] = []  # empty: every platform
    drivers: list[DriverSpec] = Field(min_length=1)
    delete_converted: bool = False  # DELETE_ARTIFACT deletes this rule's converted images
    target: TargetConfig | None = None  # None: results go to the source repository

    @field_validator("projects", "repositories", "tags")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern[3:]!r}: {exc}") from None
        return patterns


def _default_rules() -> list[RuleConfig]:
    return [RuleConfig(name="default", drivers=[DriverSpec(name="estargz")])]


class ServiceConfig(AcceldConfig):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path | None = None
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    webhook: WebhookSettings = WebhookSettings()
    workers: WorkerSettings = WorkerSettings()
    sync: SyncSettings = SyncSettings()
    notifications: NotificationSettings = NotificationSettings()
    rules: list[RuleConfig] = Field(default_factory=_default_rules)

    @model_validator(mode="before")
    @classmethod
    def _lower_case_hosts(cls, data: Any) -> Any:
        """Host names are case-insensitive; webhooks name them in lower case."""
        if isinstance(data, dict):
            data = dict(data)
            if isinstance(data.get("registries"), dict):
                data["registries"] = {str(k).lower(): v for k, v in data["registries"].items()}
            webhook = data.get("webhook")
            if isinstance(webhook, dict) and isinstance(webhook.get("sources"), dict):
                data["webhook"] = {
                    **webhook,
                    "sources": {str(k).lower(): v for k, v in webhook["sources"].items()},
                }
        return data

    @model_validator(mode="after")
    def _unique_rule_names(self) -> ServiceConfig:
        names = [rule.name for rule in self.rules]
        if len(names) != len(set(names)):
            raise ValueError("rule names must be unique")
        for rule in self.rules:
            unknown = [r for r in rule.registries if r.lower() not in self.webhook.sources]
            if unknown:
                raise ValueError(f"rule {rule.name!r} names registries without a webhook source: {unknown}")
        return self

    def registry_settings(self) -> AcceldConfig:
        """The registry part, as the conversion pipeline takes it."""
        return AcceldConfig(registries=self.registries)

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        env = os.environ.get("ACCELD_DATA_DIR")
        if env:
            return Path(env).expanduser()
        return Path.home() / ".local" / "share" / "acceld"

    def database_url(self) -> str:
        db = self.database
        url = read_secret("database.url", db.url, db.url_file, db.url_env)
        return url or f"sqlite:///{self.resolved_data_dir() / 'acceld.db'}"

    def api_token(self) -> str:
        """The management API token; generated and stored in the data directory when not configured."""
        api = self.api
        token = read_secret("api.token", api.token, api.token_file, api.token_env)
        if token:
            return token
        return _stored_token(self.resolved_data_dir() / "api-token")

    def webhook_secrets(self) -> dict[str, str]:
        """host → expected Authorization value. Sources without a value never accept a webhook."""
        result: dict[str, str] = {}
        for host, source in self.webhook.sources.items():
            value = read_secret(
                f"webhook.sources.{host}.auth_header",
                source.auth_header,
                source.auth_header_file,
                source.auth_header_env,
            )
            if value:
                result[host] = value
        return result

    def notification_secrets(self) -> dict[str, str | None]:
        """target name → its signing secret (None: unsigned)."""
        return {
            t.name: read_secret(
                f"notifications.targets.{t.name}.secret", t.secret, t.secret_file, t.secret_env
            )
            for t in self.notifications.targets
        }

    def own_operators(self) -> frozenset[str]:
        """Operators whose events are acceld's own pushes (or configured to be ignored)."""
        usernames = {r.username for r in self.registries.values() if r.username}
        return frozenset(usernames | set(self.webhook.ignore_operators))


def _stored_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read API token {path}: {exc.strerror}") from None
    private_dir(path.parent)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def load_service_config(path: Path | None) -> ServiceConfig:
    """Load the service config at `path`; None → every default. One-line ConfigError on any problem."""
    return load_yaml_model(path, ServiceConfig)
