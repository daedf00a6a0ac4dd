"""The server's connection guards one by one (short deadlines, a small cap): half-sent headers,
a body that never arrives, oversized headers and a flood past the connection cap all end with the
server closing the connection — never a 500 — while a real webhook still gets 202."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.registry import RunningRegistry
from service_helpers import (
    WEBHOOK_SECRET,
    ServiceProcess,
    default_payload,
    post_event,
    resource,
    run_service,
    service_config,
    write_config,
)

CAP = 16


@pytest.fixture(scope="module")
def service(
    registry_plain: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    work = tmp_path_factory.mktemp("service-connections")
    config = service_config(
        work / "data",
        {registry_plain.host: {"plain_http": True}},
        workers={"concurrency": 0},
        server={"port": 0, "header_timeout": 1, "body_timeout": 1, "max_connections": CAP},
    )
    with run_service(write_config(work / "acceld.yml", config), work / "serve.log") as running:
        yield running


def connect(service: ServiceProcess, first: bytes) -> socket.socket:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(first)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Reads until the server closes the connection (within the socket's 30 s timeout)."""
    try:
        while data := sock.recv(65536):
            assert not data.startswith(b"HTTP/1.1 5"), data[:200]
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def webhook_works(service: ServiceProcess, registry: RunningRegistry, n: int) -> bool:
    event = default_payload("PUSH_ARTIFACT", [resource(registry.host, "lib/app", f"sha256:{n:064x}", "v1")])
    return post_event(service.url, event).status_code == 202


def no_server_errors(service: ServiceProcess) -> None:
    log = service.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_half_sent_headers_are_closed(service: ServiceProcess) -> None:
    sock = connect(service, b"POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\n")
    assert closed_by_server(sock)


def test_a_body_that_never_arrives_is_closed(
    service: ServiceProcess, registry_plain: RunningRegistry
) -> None:
    head = (
        "POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\nContent-Type: application/json\r\n"
        f"Authorization: {WEBHOOK_SECRET}\r\nContent-Length: 5000\r\n\r\n"
    )
    sock = connect(service, head.encode() + b'{"type":')
    assert closed_by_server(sock)
    assert webhook_works(service, registry_plain, 1)
    no_server_errors(service)


def test_oversized_headers_are_closed(service: ServiceProcess) -> None:
    sock = connect(service, b"GET /healthz HTTP/1.1\r\nHost: acceld\r\n")
    try:
        for _ in range(200):  # 200 KB of headers, sent faster than the deadline
            sock.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_by_server(sock)


def test_connections_past_the_cap_close_the_oldest_idle_ones(
    registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    config = service_config(
        tmp_path / "data",
        {registry_plain.host: {"plain_http": True}},
        workers={"concurrency": 0},
        server={"port": 0, "header_timeout": 600, "max_connections": CAP},  # no deadline interferes
    )
    with run_service(write_config(tmp_path / "acceld.yml", config), tmp_path / "serve.log") as service:
        _flood_past_the_cap(service, registry_plain)


def _flood_past_the_cap(service: ServiceProcess, registry_plain: RunningRegistry) -> None:
    flood = [connect(service, b"POST /api/v1/conversions HTTP/1.1\r\n") for _ in range(3 * CAP)]
    try:
        assert webhook_works(service, registry_plain, 2)
        time.sleep(0.5)
        still_open = 0
        for sock in flood[: 2 * CAP]:  # the oldest: closed to make room
            sock.settimeout(0.05)
            try:
                still_open += sock.recv(1) != b""
            except TimeoutError:
                still_open += 1
            except ConnectionResetError:
                pass
        assert still_open == 0
    finally:
        for sock in flood:
            sock.close()
    no_server_errors(service)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /api/v1/tasks/%ff%fe HTTP/1.1\r\nHost: acceld\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"GET /api/v1/tasks?limit=99999999999999999999999 HTTP/1.1\r\nHost: acceld\r\n\r\n",
        b"POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\nAuthorization: \xc3\xa9\xff\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"GET /%00%ff/../.. HTTP/1.1\r\nHost: \xff\r\n\r\n",
    ],
)
def test_odd_requests_are_never_500(service: ServiceProcess, request_bytes: bytes) -> None:
    sock = connect(service, request_bytes)
    try:
        status = sock.recv(65536).split(b"\r\n", 1)[0]
    finally:
        sock.close()
    assert status.startswith(b"HTTP/1.1 4"), status
    no_server_errors(service)
