"""A Docker-registry token server for tests (distribution's `auth.token` protocol).

Users: `alice` may pull/push/delete everywhere and list the catalog, `reader` may only pull,
`mirror` may pull everywhere but push and delete only outside `proxy/*` (a Harbor proxy-cache
project refuses pushes), anonymous clients may pull `public/*`. Each requested scope is granted
the intersection of the requested actions and the user's rights (possibly empty), as real token
services do. Every issued token is recorded in `issued` so tests can assert which scopes a client
asked for.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVICE = "test-registry"
ISSUER = "test-issuer"
USERS = {"alice": "s3cret", "reader": "r3ader", "mirror": "m1rror"}


def rights(account: str | None, type_: str, name: str) -> set[str]:
    """The actions `account` (None = anonymous) holds on resource `type_:name`."""
    if type_ == "repository":
        if account == "alice":
            return {"pull", "push", "delete", "*"}
        if account == "reader":
            return {"pull"}
        if account == "mirror":
            return {"pull"} if name.startswith("proxy/") else {"pull", "push", "delete"}
        if account is None and name.startswith("public/"):
            return {"pull"}
    if type_ == "registry" and name == "catalog" and account == "alice":
        return {"*"}
    return set()


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """`repository:a/b:pull,push` → ("repository", "a/b", ["pull", "push"]); the name may hold `:`."""
    type_, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return type_, name, [a for a in actions.split(",") if a]


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key ID distribution matches a JWT `kid` against (not an RFC 7638 thumbprint)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@dataclass(frozen=True)
class IssuedToken:
    account: str | None
    requested: tuple[str, ...]
    access: tuple[tuple[str, str, tuple[str, ...]], ...]


@dataclass
class TokenServer:
    """Signing key, certificate bundle for the registry and the running HTTP endpoint."""

    root_cert_file: Path
    url: str = ""
    expires_in: int = 300
    issued: list[IssuedToken] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = libtrust_key_id(self._key.public_key())
        self._lock = threading.Lock()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceld test token signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.root_cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue_refresh_token(self, account: str) -> str:
        """A refresh token (Docker's `identitytoken`) accepted by POST grant_type=refresh_token."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[token] = account
        return token

    def clear(self) -> None:
        with self._lock:
            self.issued.clear()

    def issue(self, account: str | None, scopes: list[str]) -> dict[str, Any]:
        requested = [s for value in scopes for s in value.split()]
        access = []
        for scope in requested:
            type_, name, actions = parse_scope(scope)
            held = rights(account, type_, name)
            access.append((type_, name, tuple(a for a in actions if a in held)))
        now = dt.datetime.now(dt.UTC)
        claims = {
            "iss": ISSUER,
            "sub": account or "",
            "aud": SERVICE,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()) - 10,
            "exp": int(now.timestamp()) + self.expires_in,
            "jti": secrets.token_hex(8),
            "access": [{"type": t, "name": n, "actions": list(a)} for t, n, a in access],
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})
        with self._lock:
            self.issued.append(IssuedToken(account, tuple(requested), tuple(access)))
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": now.isoformat().replace("+00:00", "Z"),
        }


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _basic_account(self) -> str | None:
            header = self.headers.get("Authorization", "")
            if not header.lower().startswith("basic "):
                return None
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError as exc:
                raise _Refused(401, "malformed basic credentials") from exc
            return _check_password(user, password)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(
            self, params: dict[str, list[str]], account: str | None, refresh_token: str | None = None
        ) -> None:
            if params.get("service", [SERVICE])[0] != SERVICE:
                raise _Refused(400, "unknown service")
            answer = server.issue(account, params.get("scope", []))
            if refresh_token is not None:
                answer["refresh_token"] = refresh_token
            self._answer(200, answer)

        def do_GET(self) -> None:
            try:
                self._serve(parse_qs(urlsplit(self.path).query), self._basic_account())
            except _Refused as exc:
                self._answer(exc.status, {"errors": [{"code": "DENIED", "message": str(exc)}]})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            params = parse_qs(self.rfile.read(length).decode())
            try:
                grant = params.get("grant_type", [""])[0]
                refresh_token = None
                if grant == "password":
                    user, password = params.get("username", [""])[0], params.get("password", [""])[0]
                    account: str | None = _check_password(user, password)
                    if params.get("access_type", [""])[0] == "offline":
                        refresh_token = server.issue_refresh_token(user)
                elif grant == "refresh_token":
                    account = server.refresh_tokens.get(params.get("refresh_token", [""])[0])
                    if account is None:
                        raise _Refused(401, "unknown refresh token")
                else:
                    raise _Refused(400, f"unsupported grant_type {grant!r}")
                self._serve(params, account, refresh_token)
            except _Refused as exc:
                self._answer(exc.status, {"error": "invalid_grant", "error_description": str(exc)})

    return Handler


def _check_password(user: str, password: str) -> str:
    if USERS.get(user) != password:
        raise _Refused(401, "invalid username or password")
    return user


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that reject the TLS certificate or hang up are part of the tests, not errors."""


@contextmanager
def run_token_server(
    root_cert_file: Path, tls_context: ssl.SSLContext | None = None
) -> Iterator[TokenServer]:
    """Serve tokens at `<url>` (path /token) on 127.0.0.1 with a free port, over TLS if a context is given."""
    server = TokenServer(root_cert_file)
    httpd = _QuietServer(("127.0.0.1", 0), _handler(server))
    scheme = "http"
    if tls_context is not None:
        httpd.socket = tls_context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "https"
    server.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}/token"
    thread = threading.Thread(target=httpd.serve_forever, name="token-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
