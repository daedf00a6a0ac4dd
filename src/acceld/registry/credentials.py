"""Registry credentials: from acceld's config first, else from Docker's `config.json`.

Docker's file is `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; entries under `auths`
hold `auth` (base64 `user:password`), or `username`/`password`, and optionally `identitytoken`
(an OAuth2 refresh token). Credential helpers (`credsStore`, `credHelpers`) are not consulted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from acceld.config import ConfigError, RegistryConfig

_DOCKER_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    @property
    def has_password(self) -> bool:
        return self.username is not None and self.password is not None


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _normalise_key(key: str) -> str:
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
    host = key.split("/", 1)[0]
    return "docker.io" if host in _DOCKER_HUB_KEYS else host


def docker_config_credentials(host: str, path: Path | None = None) -> Credentials | None:
    """Credentials for `host` from Docker's config.json, None if the file or entry is absent."""
    path = path or docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read Docker config {path}: {exc}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = _normalise_key(host)
    for key, entry in auths.items():
        if _normalise_key(key) != wanted or not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ConfigError(f"Docker config {path}: bad 'auth' entry for {key}") from None
        token = entry.get("identitytoken") or None
        if username or token:
            return Credentials(username or None, password or None, token)
    return None


def resolve_credentials(host: str, settings: RegistryConfig) -> Credentials | None:
    if settings.username is not None:
        return Credentials(settings.username, settings.resolve_password())
    return docker_config_credentials(host)
