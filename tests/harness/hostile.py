"""A registry that misbehaves on purpose, and a second origin that records every request.

`HostileRegistry` speaks enough of the distribution API for one image (`hostile/app:v1`, Basic
auth with `ROBOT`) and breaks it the way its `scenario` says: token realms and pagination
`Link`s and upload `Location`s pointing at another origin, endless and slow bodies and headers,
self-pointing or endless pagination, `Retry-After` in odd forms. `Recorder` is "another origin":
it records every request it receives (so tests can assert that no credential reached it) and
answers like a willing token service and upload endpoint.

Both are real HTTP servers on loopback (threads of this test process). Slow answers stop by
themselves after `SLOW_LIMIT` seconds, endless ones when the client hangs up.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import gzip
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.tls import TlsFiles

ROBOT = ("robot$acceld", "robot-password-7f3a")
ROBOT_BASIC = "Basic " + base64.b64encode(f"{ROBOT[0]}:{ROBOT[1]}".encode()).decode()
REPOSITORY = "hostile/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SLOW_LIMIT = 60.0  # a slow answer gives up after this long even if nobody hangs up
PAGE_LIMIT = 100  # tags per page at most, whatever `n` asks for (as real registries cap it)
SCENARIOS = (
    "normal",
    "foreign-realm",  # Bearer realm on `other`
    "endless-token",  # Bearer realm on the registry itself, whose token answer never ends
    "endless-manifest",
    "huge-declared-manifest",  # Content-Length of 64 GiB
    "slow-manifest",  # one byte every 2 s
    "bad-encoding",  # a manifest "gzip"-encoded that is no gzip
    "slow-headers",  # the status line, then a header byte every 2 s
    "slow-blob",  # blobs: one byte every `dribble_interval` s
    "link-foreign",  # the tag list's next page on `other`
    "link-self",  # the tag list's next page is itself
    "link-endless",  # a new next page forever
    "location-foreign",  # uploads continue on `other`
    "blob-redirect",  # blob downloads redirected to `other` (as to a storage service)
    "big-blob",  # HEAD of a blob declares 64 GiB (a real layer may be that big)
    "slow-upload-answer",  # the PUT completing an upload is answered one header byte every 2 s
    "retry-after",  # the first manifest GET: 429 with `retry_after` as Retry-After
)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: Mapping[str, str]

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """One small OCI image: a gzip layer, its config and the manifest."""

    layer: bytes
    config: bytes
    manifest: bytes

    @classmethod
    def make(cls) -> Image:
        tar = os.urandom(3000)  # contents do not matter: nothing here unpacks it
        layer = gzip.compress(tar, mtime=0)
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(tar)]}}
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": _digest(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        return cls(layer, config, manifest)

    def blobs(self) -> dict[str, bytes]:
        return {_digest(self.layer): self.layer, _digest(self.config): self.config}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection; bodies may end at close

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        owner: _Endpoint = self.server.owner  # type: ignore[attr-defined]
        owner.seen_request(Seen(self.command, self.path, dict(self.headers.items())))
        # The client hanging up is the point of most scenarios.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            owner.answer(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        json_body: Any = None,
    ) -> None:
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def dribble(self, data: bytes, interval: float) -> None:
        """Send `data` one byte every `interval` seconds (at most SLOW_LIMIT seconds)."""
        deadline = time.monotonic() + SLOW_LIMIT
        for byte in data:
            if time.monotonic() > deadline:
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(interval)

    def endless(self, piece: bytes = b" " * 65536) -> None:
        """Send `piece` until the client hangs up (or SLOW_LIMIT passes)."""
        deadline = time.monotonic() + SLOW_LIMIT
        while time.monotonic() < deadline:
            self.wfile.write(piece)


class _Endpoint:
    """A server thread on `host`, optionally with TLS; subclasses answer requests."""

    def __init__(self, host: str, tls: TlsFiles | None) -> None:
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        if tls is not None:
            self._server.socket = tls.server_context().wrap_socket(self._server.socket, server_side=True)
        port = self._server.server_address[1]
        self.host = f"{host}:{port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def seen_request(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def answer(self, handler: _Handler) -> None:
        raise NotImplementedError


class Recorder(_Endpoint):
    """Another origin: records everything; hands out tokens and accepts uploads and pages."""

    def answer(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        handler.body()
        if path.endswith("/token"):
            handler.send(200, json_body={"token": "token-from-elsewhere", "expires_in": 300})
        elif handler.command == "PATCH":
            handler.send(202, headers={"Location": path, "Range": "0-0"})
        elif handler.command == "PUT":
            digest = parse_qs(urlsplit(handler.path).query).get("digest", [""])[0]
            handler.send(201, headers={"Docker-Content-Digest": digest, "Location": path})
        elif path.endswith("/tags/list"):
            handler.send(200, json_body={"name": REPOSITORY, "tags": ["planted-by-another-origin"]})
        else:
            handler.send(404, json_body={"errors": [{"code": "NOT_FOUND", "message": "nothing here"}]})


@dataclass
class HostileRegistry(_Endpoint):
    """The misbehaving registry; set `scenario` (see SCENARIOS) and `other` (a Recorder's URL)."""

    host_ip: str = "127.0.0.1"
    tls: TlsFiles | None = None
    scenario: str = "normal"
    other: str = ""
    retry_after: str = "0"
    dribble_interval: float = 0.5  # seconds per byte of a slow blob
    image: Image = field(default_factory=Image.make)
    pushed: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.host_ip, self.tls)
        self._served_429 = False

    def answer(self, handler: _Handler) -> None:
        scenario = self.scenario
        path = urlsplit(handler.path).path
        if scenario == "slow-headers":
            handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
            handler.dribble(b"Content-Type: application/json\r\n\r\n", 2.0)
            return
        if scenario == "foreign-realm":
            realm = f'Bearer realm="{self.other}/token",service="hostile"'
            handler.send(401, headers={"WWW-Authenticate": realm}, json_body={"errors": []})
            return
        if scenario == "endless-token":
            if path == "/token":
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.end_headers()
                handler.wfile.write(b'{"token": "')
                handler.endless(b"A" * 65536)
            elif handler.headers.get("Authorization", "").startswith("Bearer "):
                self._registry(handler, path)
            else:
                realm = f'Bearer realm="{self.url}/token",service="hostile"'
                handler.send(401, headers={"WWW-Authenticate": realm}, json_body={"errors": []})
            return
        if handler.headers.get("Authorization") != ROBOT_BASIC:
            handler.send(401, headers={"WWW-Authenticate": 'Basic realm="hostile"'}, json_body={"errors": []})
            return
        self._registry(handler, path)

    def _registry(self, handler: _Handler, path: str) -> None:
        prefix = f"/v2/{REPOSITORY}/"
        if path == "/v2/":
            handler.send(200, json_body={})
        elif path.startswith(prefix + "manifests/"):
            self._manifest(handler, path.removeprefix(prefix + "manifests/"))
        elif path.startswith(prefix + "blobs/uploads/"):
            self._upload(handler, path)
        elif path.startswith(prefix + "blobs/"):
            self._blob(handler, path.removeprefix(prefix + "blobs/"))
        elif path == prefix + "tags/list":
            self._tags(handler)
        else:
            handler.send(404, json_body={"errors": [{"code": "NAME_UNKNOWN", "message": path}]})

    def _manifest(self, handler: _Handler, ref: str) -> None:
        scenario, manifest = self.scenario, self.image.manifest
        if handler.command == "PUT":
            data = handler.body()
            self.pushed[ref] = data
            handler.send(201, headers={"Docker-Content-Digest": _digest(data)})
            return
        if ref not in ("v1", _digest(manifest)):
            handler.send(404, json_body={"errors": [{"code": "MANIFEST_UNKNOWN", "message": ref}]})
            return
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": _digest(manifest)}
        if scenario == "retry-after" and not self._served_429:
            self._served_429 = True
            handler.send(429, headers={"Retry-After": self.retry_after}, json_body={"errors": []})
        elif scenario == "endless-manifest" and handler.command == "GET":
            handler.send_response(200)
            handler.send_header("Content-Type", OCI_MANIFEST)
            handler.end_headers()
            handler.wfile.write(b'{"schemaVersion": 2, "annotations": {"x": "')
            handler.endless()
        elif scenario == "huge-declared-manifest" and handler.command == "GET":
            handler.send_response(200)
            handler.send_header("Content-Type", OCI_MANIFEST)
            handler.send_header("Content-Length", str(64 << 30))
            handler.end_headers()
            handler.endless()
        elif scenario == "bad-encoding" and handler.command == "GET":
            handler.send(200, b"\x1f\x8bnot gzip at all", {**headers, "Content-Encoding": "gzip"})
        elif scenario == "slow-manifest" and handler.command == "GET":
            handler.send_response(200)
            handler.send_header("Content-Type", OCI_MANIFEST)
            handler.send_header("Content-Length", str(len(manifest)))
            handler.end_headers()
            handler.dribble(manifest, 2.0)
        else:
            handler.send(200, manifest, {**headers, "Content-Type": OCI_MANIFEST})

    def _blob(self, handler: _Handler, digest: str) -> None:
        data = self.image.blobs().get(digest)
        if data is None:
            handler.send(404, json_body={"errors": [{"code": "BLOB_UNKNOWN", "message": digest}]})
        elif self.scenario == "big-blob" and handler.command == "HEAD":
            handler.send_response(200)
            handler.send_header("Content-Length", str(64 << 30))
            handler.send_header("Docker-Content-Digest", digest)
            handler.end_headers()
        elif self.scenario == "blob-redirect":
            handler.send(307, headers={"Location": f"{self.other}/storage/{digest}"})
        elif self.scenario == "slow-blob" and handler.command == "GET":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.dribble(data, self.dribble_interval)
        else:
            handler.send(200, data, {"Docker-Content-Digest": digest})

    def _upload(self, handler: _Handler, path: str) -> None:
        handler.body()
        if self.scenario == "location-foreign":
            handler.send(202, headers={"Location": f"{self.other}/v2/{REPOSITORY}/blobs/uploads/stolen"})
        elif handler.command == "POST":
            handler.send(202, headers={"Location": f"/v2/{REPOSITORY}/blobs/uploads/1"})
        elif handler.command == "PUT" and self.scenario == "slow-upload-answer":
            handler.wfile.write(b"HTTP/1.0 201 Created\r\n")
            handler.dribble(b"Docker-Content-Digest: sha256:0\r\n\r\n", 2.0)
        elif handler.command == "PATCH":
            handler.send(202, headers={"Location": path})
        else:
            digest = parse_qs(urlsplit(handler.path).query).get("digest", [""])[0]
            handler.send(201, headers={"Docker-Content-Digest": digest})

    def _tags(self, handler: _Handler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        page = int(query.get("page", ["0"])[0])
        n = int(query.get("n", ["100"])[0])
        tags = [f"t{page}-{i}" for i in range(min(n, PAGE_LIMIT))]
        links = {
            "link-foreign": f"{self.other}/v2/{REPOSITORY}/tags/list?page={page + 1}",
            "link-self": handler.path,
            "link-endless": f"/v2/{REPOSITORY}/tags/list?n={n}&page={page + 1}",
        }
        link = links.get(self.scenario)
        headers = {"Link": f'<{link}>; rel="next"'} if link else {}
        handler.send(200, headers=headers, json_body={"name": REPOSITORY, "tags": tags})

    def count(self, suffix: str) -> int:
        return sum(1 for seen in self.requests if urlsplit(seen.path).path.endswith(suffix))


@contextmanager
def running(*endpoints: _Endpoint) -> Iterator[None]:
    for endpoint in endpoints:
        endpoint.start()
    try:
        yield
    finally:
        for endpoint in endpoints:
            endpoint.stop()


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss_mib: float


# Linux charges a child the high-water RSS of the memory it had when it called exec; subprocess
# starts children with vfork, whose memory is the test process's own (hundreds of MB late in a
# run). A small forking wrapper makes the measured command start from the wrapper's few MB.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_measured(command: list[str], env: Mapping[str, str], timeout: float, scratch: Path) -> Measured:
    """Run `command` to its end; its exit code, output and peak RSS (from wait4, this child only)."""
    out, err, rss = scratch / "stdout", scratch / "stderr", scratch / "max-rss-kib"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(rss), *command],
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            start_new_session=True,
        )
    try:
        returncode = process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"{command} did not end within {timeout} s") from None
    return Measured(returncode, out.read_text(), err.read_text(), int(rss.read_text()) / 1024)
