"""Real Debian `docker-registry` (distribution 2.8) processes on 127.0.0.1 with kernel-chosen ports."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from harness.tls import TlsFiles, make_tls_files
from harness.token_server import ISSUER, SERVICE, USERS, TokenServer, run_token_server

_LISTENING = re.compile(rb"listening on (127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class RunningRegistry:
    host: str  # "127.0.0.1:PORT", the registry part of an image reference
    url: str  # scheme://host
    scheme: str  # "http" or "https"
    users: dict[str, str] = field(default_factory=dict)  # accepted credentials, empty = no auth
    ca_file: Path | None = None  # PEM CA that signed the server certificate (https only)
    token_server: str | None = None  # token realm URL (Bearer auth only)
    tokens: TokenServer | None = field(
        default=None, repr=False
    )  # the token server itself: `issued`, `clear()`, `expires_in`

    @property
    def cert_dir(self) -> Path | None:
        """Directory holding only `ca.crt`, for skopeo's --cert-dir style options."""
        return self.ca_file.parent if self.ca_file else None

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"


@contextmanager
def run_listening_process(
    argv: Sequence[str], log_file: Path, timeout: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a server that logs `listening on 127.0.0.1:PORT`; yield (process, "127.0.0.1:PORT")."""
    with log_file.open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(log_file.read_bytes())
            if match:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                output = log_file.read_text(errors="replace")
                raise RuntimeError(f"{argv[0]} did not start (exit {process.poll()}):\n{output}")
            time.sleep(0.02)
        yield process, match.group(1).decode()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def registry_config(workdir: Path, auth: dict[str, Any] | None, tls: TlsFiles | None) -> dict[str, Any]:
    http: dict[str, Any] = {"addr": "127.0.0.1:0", "secret": "acceld-test-secret"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls.cert_file), "key": str(tls.key_file)}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": http,
    }
    if auth is not None:
        config["auth"] = auth
    return config


@contextmanager
def run_registry(workdir: Path, *, auth: str | None = None, tls: bool = False) -> Iterator[RunningRegistry]:
    """Run docker-registry with `auth` None, "basic" or "token", optionally over TLS, until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        tls_files = make_tls_files(workdir / "tls") if tls else None
        users: dict[str, str] = {}
        tokens: TokenServer | None = None
        auth_config: dict[str, Any] | None = None
        if auth == "basic":
            users = dict(USERS)
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}\n" for u, p in users.items()
                )
            )
            auth_config = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
        elif auth == "token":
            users = dict(USERS)
            context = tls_files.server_context() if tls_files else None
            tokens = stack.enter_context(run_token_server(workdir / "token-root.crt", context))
            auth_config = {
                "token": {
                    "realm": tokens.url,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(tokens.root_cert_file),
                }
            }
        elif auth is not None:
            raise ValueError(f"unknown auth mode {auth!r}")

        config_file = workdir / "config.yml"  # JSON is YAML
        config_file.write_text(json.dumps(registry_config(workdir, auth_config, tls_files), indent=1))
        _, host = stack.enter_context(
            run_listening_process(["docker-registry", "serve", str(config_file)], workdir / "registry.log")
        )
        scheme = "https" if tls else "http"
        yield RunningRegistry(
            host=host,
            url=f"{scheme}://{host}",
            scheme=scheme,
            users=users,
            ca_file=tls_files.ca_file if tls_files else None,
            token_server=tokens.url if tokens else None,
            tokens=tokens,
        )


@contextmanager
def run_referrers_registry(workdir: Path, binary: Path) -> Iterator[RunningRegistry]:
    """Run refreg (go-containerregistry with the referrers API; no auth, plain HTTP) until the block ends."""
    (workdir / "blobs").mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "-addr", "127.0.0.1:0", "-disk", str(workdir / "blobs")]
    with run_listening_process(argv, workdir / "refreg.log") as (_, host):
        yield RunningRegistry(host=host, url=f"http://{host}", scheme="http")
