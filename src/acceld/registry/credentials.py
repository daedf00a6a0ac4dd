"""Registry credentials: from acceld's config first, else from Docker's `config.json`.

Docker's file is `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; entries under `auths`
hold `auth` (base64 `user:password`), or `username`/`password`, and optionally `identitytoken`
(an OAuth2 refresh token). Credential helpers are consulted as Docker does: `credHelpers[host]`
first, else `credsStore`, by running `docker-credential-<name> get` with the server on stdin.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from acceld.config import ConfigError, RegistryConfig

_DOCKER_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the server name Docker gives helpers for Docker Hub
_IDENTITY_TOKEN_USER = "<token>"  # a helper's username meaning: the secret is an identity token
_HELPER_TIMEOUT = 30


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
    if not isinstance(doc, dict):
        return None
    wanted = _normalise_key(host)
    helpers = doc.get("credHelpers")
    helper = helpers.get(_helper_key(helpers, wanted)) if isinstance(helpers, dict) else None
    helper = helper or doc.get("credsStore")
    if isinstance(helper, str) and helper:
        return helper_credentials(helper, wanted)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
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


def _helper_key(helpers: dict[str, object], wanted: str) -> str | None:
    return next((key for key in helpers if _normalise_key(key) == wanted), None)


def helper_credentials(helper: str, host: str) -> Credentials | None:
    """Ask `docker-credential-<helper>` for `host`; None when it has no credentials for it."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise ConfigError(f"Docker credential helper docker-credential-{helper} not found in PATH")
    server = _DOCKER_HUB_SERVER if host == "docker.io" else host
    try:
        done = subprocess.run(
            [program, "get"], input=server, capture_output=True, text=True, timeout=_HELPER_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"Docker credential helper {helper} failed for {host}: {exc}") from None
    if done.returncode != 0:
        message = (done.stdout + done.stderr).strip().splitlines()
        if any("not found" in line.lower() for line in message):
            return None
        detail = message[0] if message else f"exit code {done.returncode}"
        raise ConfigError(f"Docker credential helper {helper} failed for {host}: {detail}")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"Docker credential helper {helper} gave no credentials JSON for {host}") from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == _IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


def resolve_credentials(host: str, settings: RegistryConfig) -> Credentials | None:
    if settings.username is not None:
        return Credentials(settings.username, settings.resolve_password())
    return docker_config_credentials(host)
