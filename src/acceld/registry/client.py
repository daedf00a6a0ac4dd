"""HTTP access to one registry host: TLS settings, authentication, retries and timeouts.

`RegistryClient.request` is the single place where requests are sent: it adds the
Authorization header for the scopes an operation needs — only on the registry's own origin
(`acceld.registry.origin`) —, re-authenticates once on 401, retries idempotent requests on
429/5xx/connection errors with exponential backoff and full jitter (honouring Retry-After, up to
`max_retry_after`), and turns failures into one-line `RegistryError`s. Every request has a
deadline (`request_timeout`, longer by what a request body needs at `blob_min_speed`) and every
answer but a blob a byte cap (`acceld.registry.limits`).
Repository-level operations live in `acceld.registry.repository`.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import ssl
import time
from collections.abc import AsyncIterable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

import httpx

from acceld.config import RegistryConfig
from acceld.registry.auth import Authenticator
from acceld.registry.credentials import Credentials, resolve_credentials
from acceld.registry.errors import RegistryError, RegistryUnreachable, error_from_response
from acceld.registry.limits import MAX_RESPONSE_SIZE, read_capped, read_error_body
from acceld.registry.origin import OriginPolicy, describe, origin_of

if TYPE_CHECKING:
    from acceld.registry.repository import RegistryRepository

BlobBody = bytes | AsyncIterable[bytes]  # a stream is sent once: never replayed after a 401 or error
_DELTA_SECONDS_RE = re.compile(r"\d{1,10}(?:\.\d+)?")
_LISTING_PAGE = 1000


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 10.0
    max_retry_after: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def retry_after(value: str | None, cap: float) -> float | None:
    """The wait a `Retry-After` value asks for (delta-seconds or an HTTP-date), at most `cap`;
    None for a missing or malformed value (the caller's backoff applies then)."""
    value = (value or "").strip()
    if not value:
        return None
    if _DELTA_SECONDS_RE.fullmatch(value):
        seconds = float(value)
    else:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if parsed.tzinfo is None:  # RFC 9110 dates are GMT
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
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
    ) -> None:
        self.host = host
        self.settings = settings or RegistryConfig()
        self.retry = retry or RetryPolicy(max_retry_after=self.settings.max_retry_after)
        scheme = "http" if self.settings.plain_http else "https"
        self.base_url = f"{scheme}://{host}"
        self.origins = OriginPolicy(self.base_url)
        if credentials is None:
            credentials = resolve_credentials(host, self.settings)
        stall = self.settings.blob_stall_timeout
        self._http = httpx.AsyncClient(
            verify=_tls_context(self.settings),
            http2=self.settings.http2,
            # Per operation; the request deadline and the blob pace bound the whole (limits.py).
            timeout=httpx.Timeout(
                connect=self.settings.connect_timeout,
                read=stall,
                write=stall,
                pool=self.settings.request_timeout,
            ),
            headers={"Accept-Encoding": "identity"},  # a compressed answer could outgrow its cap per chunk
            follow_redirects=True,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )
        self.auth = Authenticator(host, credentials, self.send_bounded, self.origins)
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
        """Send a request, authenticated when `path` is on the registry's origin; return the
        response if its status is in `expect`.

        With `stream=True` the caller must `aclose()` the returned response. A streamed
        `content` is sent once (no retry, no re-authentication): authenticate first.
        """
        await self.ping()
        url = self.url(path)
        own_origin = self.origins.is_registry(url)
        scopes = list(scopes)
        reauthenticated = False
        while True:
            credentials = await self.auth.authorization(scopes) if own_origin else {}
            response = await self._send_with_retries(
                method,
                url,
                {**(headers or {}), **credentials},
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
                await read_error_body(response, self.settings.request_timeout)
            if response.status_code == 401 and not own_origin:
                where = describe(origin_of(url))
                raise RegistryError(
                    f"{what}: {where} asks for credentials, which are sent only to {self.host}",
                    repository=repository,
                    status=401,
                )
            if response.status_code == 401:
                if reauthenticated or not (content is None or isinstance(content, bytes)):
                    raise self.auth.final_error(response, repository, what)
                scopes = await self.auth.handle_unauthorized(response, scopes, repository)
                reauthenticated = True
                continue
            raise error_from_response(response, what, repository)

    async def send_bounded(
        self,
        request: httpx.Request,
        *,
        what: str,
        repository: str | None = None,
        stream: bool = False,
        auth: tuple[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> httpx.Response:
        """Send `request` within its deadline and read its body with the response cap.

        The deadline is `request_timeout`, plus the time a request body (a blob upload) takes
        at `blob_min_speed`. With `stream` it covers the answer's headers and the caller reads
        (and closes) the body.
        """
        settings = self.settings
        body_size = int(request.headers.get("content-length") or 0)
        seconds: float | None = settings.request_timeout
        if body_size:
            min_speed = settings.blob_min_speed
            seconds = settings.request_timeout + body_size / min_speed if min_speed else None
        where = f" in {repository}" if repository else ""
        try:
            async with asyncio.timeout(seconds):
                response = await self._http.send(
                    request, stream=True, auth=auth, follow_redirects=follow_redirects
                )
                if not stream:
                    try:
                        await read_capped(response, MAX_RESPONSE_SIZE, f"{what}{where}")
                    finally:
                        await response.aclose()
        except TimeoutError:
            if seconds is None:
                raise
            raise RegistryUnreachable(
                f"{what}{where}: no complete answer from {request.url.host} within {seconds:.0f} s "
                "(registry setting request_timeout)",
                repository=repository,
            ) from None
        return response

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
        replayable = content is None or isinstance(content, bytes)
        attempt = 0
        while True:
            try:
                request = self._http.build_request(
                    method, url, headers=headers, params=params, content=content
                )
                response = await self.send_bounded(
                    request, what=what, repository=repository, stream=stream
                )
            except httpx.TransportError as exc:
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
            if retryable and idempotent and replayable and attempt + 1 < self.retry.attempts:
                delay = retry_after(response.headers.get("retry-after"), self.retry.max_retry_after)
                await response.aclose()
                await asyncio.sleep(self.retry.backoff(attempt) if delay is None else delay)
                attempt += 1
                continue
            return response

    async def list_pages(
        self,
        path: str,
        key: str,
        *,
        scopes: Sequence[str],
        what: str,
        repository: str | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """The names under `key` of a paginated listing (tags, catalog), following `Link` headers.

        Stops after `limit` names. A listing longer than `max_listing_entries`, a `Link` to
        another origin (its names would pass as this registry's) or back to a page already read,
        and more pages than such a listing needs are refused.
        """
        where = repository or self.host
        cap = self.settings.max_listing_entries
        max_pages = max(10, cap // 10)  # pages of ten names at least, unless the listing ends
        names: list[str] = []
        seen: set[str] = set()
        url: str | None = path
        params: dict[str, int] | None = {"n": min(limit or _LISTING_PAGE, _LISTING_PAGE)}
        while url:
            response = await self.request(
                "GET", url, scopes=scopes, what=what, repository=repository, params=params
            )
            seen.add(str(response.request.url))
            try:
                page = response.json().get(key) or []
            except (ValueError, AttributeError):
                page = None
            if not isinstance(page, list):
                raise RegistryError(f"{where} sent an invalid {what}")
            names.extend(str(name) for name in page)
            if limit is not None and len(names) >= limit:
                return names[:limit]
            if len(names) > cap:
                raise RegistryError(
                    f"{what} of {where} has more than {cap} entries (registry setting max_listing_entries)"
                )
            next_link = response.links.get("next", {}).get("url")
            if not next_link:
                break
            try:
                next_url = response.url.join(next_link)
            except httpx.InvalidURL:
                raise RegistryError(f"{where} sent an invalid Link for its {what}") from None
            if not self.origins.is_registry(next_url):
                raise RegistryError(
                    f"{what} of {where}: refusing a next page on another origin "
                    f"({describe(origin_of(next_url))})"
                )
            if str(next_url) in seen:
                raise RegistryError(f"{what} of {where}: the registry's pagination loops; refused")
            if len(seen) >= max_pages:
                raise RegistryError(f"{what} of {where}: more than {max_pages} pages; refused")
            url, params = str(next_url), None
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
