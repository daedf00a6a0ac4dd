"""HTTP connections that cannot hold the server hostage (slowloris and friends).

uvicorn bounds neither how long a client may take to send a request nor how many connections it
keeps open: a thousand half-sent requests exhaust the file descriptors and every later webhook
fails. The protocol here adds, per connection:

* a deadline for the request line and headers (`header_timeout`, from the connection's first byte
  on, or from a keep-alive request's first byte) and their size (`max_header_bytes`);
* a deadline for the body once the headers are in (`body_timeout`);
* a cap on open connections: past `max_connections` the oldest connection that no request of the
  application is using (still sending headers, idle between keep-alive requests, or trickling a
  body the application already answered) is closed, so a new client always gets in.

An expired deadline closes the connection (there is nobody to answer who is not sending).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("acceld.service")

# File descriptors kept free of connections: database, job pipes, logs, registry clients.
RESERVED_FDS = 256


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else 1 << 30
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit from %d to %d: %s", soft, wanted, exc)
        return soft
    return wanted


def connection_cap(configured: int, fd_limit: int) -> int:
    """`configured`, lowered so that connections can never use up the file descriptors."""
    return max(1, min(configured, fd_limit - RESERVED_FDS))


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the deadlines and the connection cap of `limits`."""

    arrivals = itertools.count()

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _opened = 0  # arrival order (the loop's clock repeats within one iteration)
        _header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = next(arrivals)
            self._start_deadline(limits.header_timeout)
            self._enforce_connection_cap()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_deadline()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._deadline is None:  # a keep-alive connection's next request
                self._start_deadline(limits.header_timeout)

        def on_url(self, url: bytes) -> None:
            self._count_header_bytes(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header_bytes(len(name) + len(value))
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._start_deadline(limits.body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._stop_deadline()
            super().on_message_complete()

        def _count_header_bytes(self, amount: int) -> None:
            self._header_bytes += amount
            if self._header_bytes > limits.max_header_bytes and not self.transport.is_closing():
                log.warning(
                    "closing a connection whose request headers exceed %d bytes", limits.max_header_bytes
                )
                self.transport.close()

        def _start_deadline(self, seconds: float) -> None:
            self._stop_deadline()
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

        def _stop_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def _unused(self) -> bool:
            """No request of this connection is with the application."""
            return self.cycle is None or self.cycle.response_complete

        def _enforce_connection_cap(self) -> None:
            open_connections: list[Any] = [c for c in self.connections if not c.transport.is_closing()]
            excess = len(open_connections) - limits.max_connections
            if excess <= 0:
                return
            evictable = sorted(
                (
                    c
                    for c in open_connections
                    if isinstance(c, GuardedProtocol) and c is not self and c._unused()
                ),
                key=lambda c: c._opened,
            )
            for connection in evictable[:excess]:
                connection.transport.close()
            if len(evictable) < excess:  # every other connection is serving a request
                self.transport.close()

    return GuardedProtocol
