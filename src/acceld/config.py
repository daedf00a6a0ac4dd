"""acceld's YAML configuration of registries (embeddable in a larger service config).

```yaml
registries:
  harbor.example.com:
    username: robot$acceld
    password_file: /run/secrets/harbor
  127.0.0.1:5000:
    plain_http: true
```

Keys are registry hosts as written in references (`host[:port]`). Top-level keys other than
`registries` are ignored here: they belong to the components that embed this model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from acceld.errors import AcceldError
from acceld.formats.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:  # yaml is imported only to read a config file: a command without one starts faster
    import yaml

M = TypeVar("M", bound=BaseModel)


class ConfigError(AcceldError):
    """An unreadable or invalid configuration file or secret."""


class RegistryConfig(BaseModel):
    """How to reach and authenticate to one registry host."""

    model_config = ConfigDict(extra="forbid")

    plain_http: bool = False
    insecure: bool = False
    ca_file: Path | None = None
    http2: bool = False
    upload_chunk_size: int | None = None  # bytes per PATCH (e.g. behind a proxy limiting bodies)
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    # Limits against slow or misbehaving registries (README "Limits"). Seconds unless noted.
    connect_timeout: float = Field(default=10.0, gt=0)
    request_timeout: float = Field(default=120.0, gt=0)  # a whole request and its body, blobs aside
    blob_stall_timeout: float = Field(default=60.0, gt=0)  # blob transfers: see blob_min_speed
    blob_min_speed: int = Field(default=1024, ge=0)  # bytes/s a blob transfer must average per stall window
    max_retry_after: float = Field(default=30.0, ge=0)  # longest Retry-After wait honoured
    max_listing_entries: int = Field(default=100_000, ge=1)  # tags or repositories in one listing

    @model_validator(mode="after")
    def _one_password_source(self) -> RegistryConfig:
        sources = [s for s in (self.password, self.password_file, self.password_env) if s is not None]
        if len(sources) > 1:
            raise ValueError("set only one of password, password_file, password_env")
        return self

    def resolve_password(self) -> str | None:
        """The password from whichever source is configured; ConfigError if that source is missing."""
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read password_file {self.password_file}: {exc.strerror}") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"password_env {self.password_env} is not set")
            return value
        return None


class AcceldConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    registries: dict[str, RegistryConfig] = {}
    limits: Limits = DEFAULT_LIMITS  # resource limits for untrusted images (README, Limits)

    @field_validator("limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> Limits:
        if isinstance(value, Limits):
            return value
        if value is None:
            return DEFAULT_LIMITS
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of limit names to numbers")
        return DEFAULT_LIMITS.with_overrides(value)

    def registry(self, host: str) -> RegistryConfig:
        """Settings for `host` (defaults when the host is not configured)."""
        return self.registries.get(host) or RegistryConfig()


def _mark_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Mark | None:
    """Where the value at `loc` (a validation error's path) starts in the composed YAML document."""
    import yaml

    mark = node.start_mark if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        mark = node.start_mark
    return mark


def _describe(exc: ValidationError, document: yaml.Node | None) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    mark = _mark_of(document, tuple(err["loc"]))
    position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{position}{where}: {message}" if where else f"{position}{message}"


def load_yaml_model(path: Path | None, model: type[M]) -> M:
    """Validate the YAML file at `path` as `model`; None → the model's defaults. One-line ConfigError
    naming the line and column of the problem."""
    data: Any = {}
    document: yaml.Node | None = None
    if path is not None:
        import yaml

        try:
            text = path.read_text()
            document = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not UTF-8 text") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = exc.problem or exc.context or "syntax error"
            raise ConfigError(f"config {path} is not valid YAML: {position}{problem}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config {path}: {_describe(exc, document)}") from None


def load_config(path: Path | None) -> AcceldConfig:
    """Load the config file at `path`; no path → defaults. One-line ConfigError on any problem."""
    return load_yaml_model(path, AcceldConfig)
