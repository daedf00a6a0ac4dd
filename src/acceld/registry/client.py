"""HTTP access to one registry host: TLS settings, authentication, retries and timeouts.

`RegistryClient.request` is the single place where requests are sent: it adds the
Authorization header for the scopes an operation needs, re-authenticates once on 401, retries
idempotent requests on 429/5xx/connection errors with exponential backoff and full jitter
(honouring Retry-After), and turns failures into one-line `RegistryError`s. Repository-level
operations live in `acceld.registry.repository`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import ssl
import time
from collections.abc import AsyncIterable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from acceld.config import RegistryConfig
from acceld.registry.auth import Authenticator
from acceld.registry.credentials import Credentials, resolve_credentials
from acceld.registry.errors import RegistryError, RegistryUnreachable, error_from_response

if TYPE_CHECKING:
    from acceld.registry.repository import RegistryRepository

BlobBody = bytes | AsyncIterable[bytes]  # a stream is sent once: never replayed after a 401 or error
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=120.0, pool=120.0)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_retry_after: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return min(max(seconds, 0.0), cap)


def _tls_context(settings: RegistryConfig) -> ssl.SSLContext | bool:
    if settings.insecure:
        return False
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load ca_file {settings.ca_file}: {exc}") from None
    return context


class RegistryClient:
    """One registry host. Use as an async context manager or call `aclose()`."""

    def __init__(
        self,
        host: str,
        settings: RegistryConfig | None = None,
        *,
        credentials: Credentials | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.settings = settings or RegistryConfig()
        self.retry = retry or RetryPolicy()
        scheme = "http" if self.settings.plain_http else "https"
        self.base_url = f"{scheme}://{host}"
        if credentials is None:
            credentials = resolve_credentials(host, self.settings)
        self._http = httpx.AsyncClient(
            verify=_tls_context(self.settings),
            http2=self.settings.http2,
            timeout=timeout,
            follow_redirects=True,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self.auth = Authenticator(host, credentials, self._http)
        self._pinged = False
        self._ping_lock = asyncio.Lock()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def repository(self, name: str) -> RegistryRepository:
        from acceld.registry.repository import RegistryRepository

        return RegistryRepository(self, name)

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    async def ping(self) -> None:
        """GET /v2/ once to learn the auth challenge (so later requests authenticate up front)."""
        if self._pinged:
            return
        async with self._ping_lock:
            if self._pinged:
                return
            response = await self._send_with_retries(
                "GET", self.url("/v2/"), {}, None, None, "ping", None, stream=False, idempotent=True
            )
            if response.status_code == 401:
                self.auth.learn(response)
            elif response.status_code >= 400 and response.status_code != 404:
                raise error_from_response(response, f"ping of {self.host}", None)
            self._pinged = True

    async def request(
        self,
        method: str,
        path: str,
        *,
        scopes: Sequence[str],
        what: str,
        repository: str | None = None,
        expect: Collection[int] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        content: BlobBody | None = None,
        stream: bool = False,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send an authenticated request; return the response if its status is in `expect`.

        With `stream=True` the caller must `aclose()` the returned response. A streamed
        `content` is sent once (no retry, no re-authentication): authenticate first.
        """
        await self.ping()
        url = self.url(path)
        scopes = list(scopes)
        reauthenticated = False
        while True:
            req_headers = {**(headers or {}), **await self.auth.authorization(scopes)}
            response = await self._send_with_retries(
                method,
                url,
                req_headers,
                params,
                content,
                what,
                repository,
                stream=stream,
                idempotent=idempotent,
            )
            if response.status_code in expect:
                return response
            if stream:
                await response.aread()
                await response.aclose()
            if response.status_code == 401:
                if reauthenticated or not (content is None or isinstance(content, bytes)):
                    raise self.auth.final_error(response, repository, what)
                scopes = await self.auth.handle_unauthorized(response, scopes, repository)
                reauthenticated = True
                continue
            raise error_from_response(response, what, repository)

    async def _send_with_retries(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Any,
        content: BlobBody | None,
        what: str,
        repository: str | None,
        *,
        stream: bool,
        idempotent: bool,
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(
                    method, url, headers=headers, params=params, content=content
                )
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                replayable = content is None or isinstance(content, bytes)
                if (
                    idempotent
                    and replayable
                    and attempt + 1 < self.retry.attempts
                    and not _is_tls_failure(exc)
                ):
                    await asyncio.sleep(self.retry.backoff(attempt))
                    attempt += 1
                    continue
                raise self.transport_error(exc, what, repository) from None
            except (httpx.RequestError, httpx.InvalidURL) as exc:  # redirect loops, malformed Location
                raise RegistryError(
                    f"{what}: request to {self.host} failed: {exc}", repository=repository
                ) from None
            retryable = response.status_code == 429 or response.status_code >= 500
            if (
                retryable
                and idempotent
                and (content is None or isinstance(content, bytes))
                and attempt + 1 < self.retry.attempts
            ):
                delay = _retry_after(response, self.retry.max_retry_after)
                await response.aclose()
                await asyncio.sleep(self.retry.backoff(attempt) if delay is None else delay)
                attempt += 1
                continue
            return response

    async def list_pages(
        self, path: str, key: str, *, scopes: Sequence[str], what: str, repository: str | None = None
    ) -> list[str]:
        """The names under `key` of a paginated listing (tags, catalog), following `Link` headers."""
        names: list[str] = []
        url: str | None = path
        params: dict[str, int] | None = {"n": 1000}
        while url:
            response = await self.request(
                "GET", url, scopes=scopes, what=what, repository=repository, params=params
            )
            try:
                page = response.json().get(key) or []
            except (ValueError, AttributeError):
                where = repository or self.host
                raise RegistryError(f"{where} sent an invalid {what}") from None
            names.extend(str(name) for name in page)
            next_link = response.links.get("next", {}).get("url")
            url = str(response.url.join(next_link)) if next_link else None
            params = None
        return names

    async def catalog(self) -> list[str]:
        """Every repository of the registry (`/v2/_catalog`)."""
        return await self.list_pages(
            "/v2/_catalog", "repositories", scopes=["registry:catalog:*"], what="catalog"
        )

    def transport_error(self, exc: httpx.TransportError, what: str, repository: str | None) -> RegistryError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if _is_tls_failure(exc):
            hint = "set ca_file, or insecure/plain_http for this registry if intended"
            return RegistryUnreachable(
                f"TLS failure talking to {self.host} ({reason}); {hint}",
                repository=repository,
                transient=False,
            )
        if isinstance(exc, httpx.TimeoutException):
            return RegistryUnreachable(
                f"{what}: timed out talking to {self.host} ({type(exc).__name__})", repository=repository
            )
        return RegistryUnreachable(f"cannot reach registry {self.host}: {reason}", repository=repository)


def _is_tls_failure(exc: httpx.TransportError) -> bool:
    text = str(exc)
    return isinstance(exc, httpx.ConnectError) and ("SSL" in text or "CERTIFICATE" in text)
