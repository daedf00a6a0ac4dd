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
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from acceld.errors import AcceldError

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

    def registry(self, host: str) -> RegistryConfig:
        """Settings for `host` (defaults when the host is not configured)."""
        return self.registries.get(host) or RegistryConfig()


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_yaml_model(path: Path | None, model: type[M]) -> M:
    """Validate the YAML file at `path` as `model`; None → the model's defaults. One-line ConfigError."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config {path}: {_describe(exc)}") from None


def load_config(path: Path | None) -> AcceldConfig:
    """Load the config file at `path`; no path → defaults. One-line ConfigError on any problem."""
    return load_yaml_model(path, AcceldConfig)
