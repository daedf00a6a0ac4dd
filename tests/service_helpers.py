"""Helpers for the service tests: a real `acceld serve` process, Harbor payloads, a 503-injecting proxy."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource as rlimits
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

WEBHOOK_SECRET = "Bearer webhook-s3cret"
API_TOKEN = "api-t0ken"
ROBOT = "robot$library+acceld"
_RUNNING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def service_config(
    data_dir: Path,
    sources: dict[str, dict[str, Any]],
    *,
    rules: list[dict[str, Any]] | None = None,
    workers: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A service config: `sources` maps registry host → its `registries` entry (all accept WEBHOOK_SECRET)."""
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "server": {"port": 0},
        "api": {"token": API_TOKEN},
        "registries": sources,
        "webhook": {"sources": {host: {"auth_header": WEBHOOK_SECRET} for host in sources}},
        "workers": {
            "concurrency": 1,
            "lease_seconds": 5,
            "poll_seconds": 0.2,
            "backoff_initial": 0.5,
            "child_grace_seconds": 1.0,
            "shutdown_grace_seconds": 5,
            **(workers or {}),
        },
        "rules": rules or [{"name": "all", "drivers": [{"name": "estargz"}]}],
    }
    config.update(extra)
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def acceld_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from acceld.cli import main; main()", *args]


@dataclass
class ServiceProcess:
    """A running `acceld serve` (a real process on a kernel-chosen port)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait (graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_service(
    config_file: Path,
    log: Path,
    env: dict[str, str] | None = None,
    umask: int = -1,
    open_files: int | None = None,
) -> Iterator[ServiceProcess]:
    """Start `acceld serve --config FILE` (log written to `log`, truncated) and wait until it listens;
    `open_files`: the soft limit of open files it starts with."""

    def limit_files() -> None:
        if open_files is not None:
            hard = rlimits.getrlimit(rlimits.RLIMIT_NOFILE)[1]
            rlimits.setrlimit(rlimits.RLIMIT_NOFILE, (open_files, hard))

    with log.open("wb") as out:
        process = subprocess.Popen(
            acceld_command("serve", "--config", str(config_file)),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            umask=umask,
            preexec_fn=limit_files if open_files is not None else None,
        )
    try:
        deadline = time.monotonic() + 60
        while not (match := _RUNNING.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")
                raise RuntimeError(f"acceld serve did not start (exit {process.poll()}):\n{text[-3000:]}")
            time.sleep(0.05)
        yield ServiceProcess(process, match.group(1), log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- Harbor payloads ---------------------------------------------------------------------------


def resource(host: str, repository: str, digest: str, tag: str | None = None) -> dict[str, str]:
    """A Harbor resource: by tag, or digest-only (`tag` = the digest, `@digest` URL) when tag is None."""
    if tag is None:
        return {"digest": digest, "tag": digest, "resource_url": f"{host}/{repository}@{digest}"}
    return {"digest": digest, "tag": tag, "resource_url": f"{host}/{repository}:{tag}"}


def default_payload(
    event_type: str, resources: list[dict[str, str]], operator: str = "admin"
) -> dict[str, Any]:
    repository = (
        resources[0]["resource_url"].split("/", 1)[1].split("@")[0].rsplit(":", 1)[0] if resources else ""
    )
    namespace, _, name = repository.partition("/")
    return {
        "type": event_type,
        "occur_at": int(time.time()),
        "operator": operator,
        "event_data": {
            "resources": resources,
            "repository": {
                "date_created": 1700000000,
                "name": name,
                "namespace": namespace,
                "repo_full_name": repository,
                "repo_type": "private",
            },
        },
    }


CLOUDEVENT_TYPES = {
    "PUSH_ARTIFACT": "harbor.artifact.pushed",
    "DELETE_ARTIFACT": "harbor.artifact.deleted",
    "PULL_ARTIFACT": "harbor.artifact.pulled",
}


def cloudevent_payload(
    event_type: str,
    resources: list[dict[str, str]],
    operator: str = "admin",
    event_id: str = "0b7d1f5e-3c1a-4b7e-9f57-2f0f2d4c9a10",
) -> dict[str, Any]:
    default = default_payload(event_type, resources, operator)
    return {
        "specversion": "1.0",
        "id": event_id,
        "requestid": "",
        "source": "/projects/1/webhook/policies/1",
        "type": CLOUDEVENT_TYPES[event_type],
        "datacontenttype": "application/json",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": default["event_data"],
        "operator": operator,
    }


def post_event(
    url: str, payload: dict[str, Any], *, cloudevents: bool = False, auth: str | None = WEBHOOK_SECRET
) -> httpx.Response:
    headers = {"Content-Type": "application/cloudevents+json" if cloudevents else "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    return httpx.post(f"{url}/api/v1/conversions", content=json.dumps(payload), headers=headers, timeout=30)


def wait_for(check: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def tasks_of(api: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    response = api.get("/api/v1/tasks", params={"limit": 500, **filters})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def wait_finished(api: httpx.Client, task_id: str, timeout: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        task: dict[str, Any] = api.get(f"/api/v1/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed", "skipped", "cancelled") else None

    result: dict[str, Any] = wait_for(finished, timeout, f"task {task_id} to finish")
    return result


# -- a registry that fails the first pushes --------------------------------------------------------


@dataclass
class FlakyProxy:
    """Reverse proxy in front of a registry answering 503 to the first `fail_puts` PUT requests."""

    upstream: str  # host:port
    fail_puts: int
    host: str = ""
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, method: str) -> bool:
        """True when this request gets a 503."""
        with self._lock:
            if method == "PUT" and self.fail_puts > 0:
                self.fail_puts -= 1
                return True
            return False


def _proxy_handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if proxy.decide(self.command):
                proxy.requests.append((self.command, self.path, 503))
                payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected failure"}]}'
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")
            }
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            proxy.requests.append((self.command, self.path, response.status))
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() in ("connection", "transfer-encoding", "content-length"):
                    continue
                self.send_header(key, value.replace(proxy.upstream, proxy.host))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    return Handler


@contextmanager
def run_flaky_proxy(upstream: str, fail_puts: int) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream, fail_puts)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(proxy))
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def run_trap_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that records every request: the service must never contact it."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _hit(self) -> None:
            hits.append(f"{self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _hit

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- PostgreSQL (the task store's second database) -------------------------------------------------


def _postgres_bin() -> Path | None:
    for candidate in [
        *os.environ.get("PATH", "").split(os.pathsep),
        *map(str, Path("/usr/lib/postgresql").glob("*/bin")),
    ]:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    return None


@contextmanager
def run_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a Unix socket; yields a SQLAlchemy URL prefix (append a database).

    Raises RuntimeError when PostgreSQL or psycopg is not installed. As root the server runs as the
    `postgres` user (PostgreSQL refuses to run as root).
    """
    import importlib.util
    import shutil
    import tempfile

    binaries = _postgres_bin()
    if binaries is None or importlib.util.find_spec("psycopg") is None:
        raise RuntimeError("PostgreSQL binaries or psycopg not installed")
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="acceld-pg-"))
    if run_as:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        [*run_as, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "acceld"],
        check=True,
        capture_output=True,
    )
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *run_as,
                str(binaries / "postgres"),
                "-D",
                str(data),
                "-k",
                str(root),
                "-c",
                "listen_addresses=",
                "-p",
                "5432",
                "-c",
                "fsync=off",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready to accept connections" not in log.read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield f"postgresql+psycopg://acceld@/{{database}}?host={root}&port=5432"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(url_template: str, name: str) -> str:
    """CREATE DATABASE `name` on the cluster and return its URL."""
    import psycopg

    admin = url_template.format(database="postgres").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_template.format(database=name)


# -- a receiver of completion notifications -----------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


@dataclass
class NotificationReceiver:
    """Records every POST; answers 500 to the first `fail_first`, and 503 while `refuse`."""

    url: str = ""
    fail_first: int = 0
    refuse: bool = False
    redirect_to: str | None = None  # answer 307 with this Location
    delay: float = 0.0  # seconds before answering
    arrivals: int = 0  # requests received, answered or not
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self._lock:
            if self.redirect_to:
                return 307
            if self.refuse:
                return 503
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500
            return 204

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status < 300]


@contextmanager
def run_notification_receiver(fail_first: int = 0) -> Iterator[NotificationReceiver]:
    receiver = NotificationReceiver(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver._lock:
                receiver.arrivals += 1
            time.sleep(receiver.delay)
            status = receiver.answer()
            with receiver._lock:
                receiver.requests.append(Received(dict(self.headers.items()), body, status))
            self.send_response(status)
            if status == 307 and receiver.redirect_to:
                self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/acceld"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
