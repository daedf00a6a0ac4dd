"""Registry authentication: challenge parsing, Basic, and Bearer tokens cached per scope set.

A token realm must be acceptable to the registry's `OriginPolicy` (its own origin or https):
the realm receives the robot password, so a registry cannot point it at another service over
plain http. Token requests carrying a password in a form body never follow redirects.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from acceld.registry.credentials import Credentials
from acceld.registry.errors import AuthenticationError, PermissionDenied, RegistryError, RegistryUnreachable
from acceld.registry.origin import OriginPolicy

_PARAM_RE = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)')
_DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
_REFRESH_MARGIN = 10.0
_CLIENT_ID = "acceld"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_challenge(header: str) -> Challenge | None:
    """Parse a `WWW-Authenticate` value such as `Bearer realm="…",service="…",scope="a b"`."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {}
    for key, value in _PARAM_RE.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


class BoundedSender(Protocol):
    """`RegistryClient.send_bounded`: one request under the deadline, its body read with the cap."""

    def __call__(
        self,
        request: httpx.Request,
        *,
        what: str,
        auth: tuple[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> Awaitable[httpx.Response]: ...


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"


def _scope_key(scopes: Sequence[str]) -> str:
    return " ".join(sorted(set(scopes)))


class Authenticator:
    """Produces the Authorization header for a request needing `scopes` on one registry host."""

    def __init__(
        self, host: str, credentials: Credentials | None, send: BoundedSender, origins: OriginPolicy
    ) -> None:
        self.host = host
        self.credentials = credentials
        self._send = send
        self._origins = origins
        self.challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._refresh_token = credentials.identity_token if credentials else None

    async def authorization(self, scopes: Sequence[str]) -> dict[str, str]:
        challenge = self.challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            creds = self.credentials
            if creds is None or not creds.has_password:
                return {}
            raw = f"{creds.username}:{creds.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if challenge.scheme == "bearer":
            return {"Authorization": "Bearer " + await self._token(scopes)}
        return {}

    def learn(self, response: httpx.Response) -> Challenge | None:
        """Record the challenge of a 401 response (the first known challenge decides the scheme)."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge is not None and challenge.scheme in ("basic", "bearer"):
            self.challenge = challenge
        return challenge

    async def handle_unauthorized(
        self, response: httpx.Response, scopes: Sequence[str], repository: str | None
    ) -> list[str]:
        """After a 401: prepare a retry and return the scopes to retry with, or raise."""
        challenge = self.learn(response)
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise AuthenticationError(
                f"{self.host} requires an unsupported authentication method",
                repository=repository,
                status=401,
            )
        if challenge.scheme == "basic":
            if self.credentials is None or not self.credentials.has_password:
                raise self._missing_credentials(repository)
            return list(scopes)
        wanted = sorted({*scopes, *challenge.scopes})
        self._tokens.pop(_scope_key(wanted), None)
        return wanted

    def final_error(self, response: httpx.Response, repository: str | None, what: str) -> RegistryError:
        """The error for a 401 that persisted after re-authenticating."""
        challenge = self.learn(response)
        error = challenge.params.get("error", "") if challenge else ""
        if error == "insufficient_scope":
            hint = "" if self.credentials else f" (no credentials configured for {self.host})"
            return PermissionDenied(
                f"insufficient permission for {repository or self.host}: {what}{hint}",
                code="DENIED",
                repository=repository,
                status=401,
            )
        if self.credentials is None:
            return self._missing_credentials(repository)
        return AuthenticationError(
            f"authentication failed for {self.host}: wrong username or password",
            code="UNAUTHORIZED",
            repository=repository,
            status=401,
        )

    def _missing_credentials(self, repository: str | None) -> AuthenticationError:
        return AuthenticationError(
            f"authentication required for {self.host}: no credentials configured",
            code="UNAUTHORIZED",
            repository=repository,
            status=401,
        )

    async def _token(self, scopes: Sequence[str]) -> str:
        key = _scope_key(scopes)
        cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        token, lifetime = await self._fetch_token(scopes)
        # Refresh a little before the registry would reject the token.
        self._tokens[key] = (token, time.monotonic() + lifetime - min(_REFRESH_MARGIN, lifetime / 2))
        return token

    async def _fetch_token(self, scopes: Sequence[str]) -> tuple[str, float]:
        assert self.challenge is not None
        realm = self.challenge.params.get("realm")
        if not realm:
            raise AuthenticationError(f"{self.host} sent a Bearer challenge without a realm")
        try:
            realm_ok = self._origins.may_receive_data(realm)
        except httpx.InvalidURL:
            realm_ok = False
        if not realm_ok or httpx.URL(realm).scheme not in ("http", "https"):
            raise AuthenticationError(
                f"{self.host} names token service {realm[:200]!r}: refused, credentials go only to the "
                "registry's origin or an https token service"
            )
        service = self.challenge.params.get("service")
        creds = self.credentials
        try:
            if self._refresh_token:
                response = await self._post_token(
                    realm,
                    service,
                    scopes,
                    {"grant_type": "refresh_token", "refresh_token": self._refresh_token},
                )
            else:
                params: list[tuple[str, str | int | float | bool | None]] = (
                    [("service", service)] if service else []
                )
                params += [("scope", s) for s in sorted(set(scopes))]
                auth = (creds.username or "", creds.password or "") if creds and creds.has_password else None
                request = httpx.Request("GET", realm, params=params)
                response = await self._send(request, what=f"token from {realm}", auth=auth)
                if response.status_code in (404, 405) and auth is not None:
                    response = await self._post_token(
                        realm,
                        service,
                        scopes,
                        {"grant_type": "password", "username": auth[0], "password": auth[1]},
                    )
        except httpx.TransportError as exc:
            raise RegistryUnreachable(f"cannot reach token service {realm} of {self.host}: {exc}") from None
        except httpx.RequestError as exc:  # an undecodable answer, too many redirects
            raise RegistryError(f"token service {realm} of {self.host} failed: {exc}") from None
        if response.status_code in (401, 403):
            if creds is None:
                raise self._missing_credentials(None)
            raise AuthenticationError(
                f"authentication failed for {self.host}: wrong username or password",
                code="UNAUTHORIZED",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token service {realm} of {self.host} answered HTTP {response.status_code}",
                status=response.status_code,
                transient=response.status_code >= 500,
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token, body = None, {}
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {realm} of {self.host} returned no token")
        if isinstance(body.get("refresh_token"), str):
            self._refresh_token = body["refresh_token"]
        expires_in = body.get("expires_in")
        valid = isinstance(expires_in, int | float) and expires_in > 0
        return token, float(expires_in) if valid else _DEFAULT_TOKEN_LIFETIME

    async def _post_token(
        self, realm: str, service: str | None, scopes: Sequence[str], grant: dict[str, str]
    ) -> httpx.Response:
        form = {**grant, "client_id": _CLIENT_ID, "scope": " ".join(sorted(set(scopes)))}
        if service:
            form["service"] = service
        request = httpx.Request("POST", realm, data=form)
        return await self._send(request, what=f"token from {realm}", follow_redirects=False)
