"""No conversion process outlives its job: job timeout, cancel, SIGTERM and kill -9 of the server, and
kill -9 of the job itself, each in the middle of a layer conversion. Every process the service starts
carries a marker in its environment; afterwards /proc must hold none but the server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
import pytest
import zstandard
from harness.clients import skopeo_copy
from harness.images import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    add_blob,
    add_blob_file,
    canonical_json,
    init_layout,
    tag_in_index,
)
from harness.registry import RunningRegistry
from service_helpers import (
    ServiceProcess,
    default_payload,
    post_event,
    resource,
    run_service,
    service_config,
    wait_finished,
    wait_for,
    write_config,
)

MARK = "ACCELD_TEST_PROCESS_MARK"
REPOSITORY = "slow/{ending}"  # one per case: a conversion that finished cannot make another skip
# zstd level 19 over incompressible data: a layer worker is busy for a minute or more.
SLOW_RULE = {"name": "slow", "drivers": [{"name": "zstdchunked", "options": {"compression_level": 19}}]}


class _Pattern(io.RawIOBase):
    """`size` bytes repeating one random block."""

    def __init__(self, block: bytes, size: int) -> None:
        self.block, self.left, self.offset = block, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left, len(self.block) - self.offset)
        buffer[:n] = self.block[self.offset : self.offset + n]
        self.offset = (self.offset + n) % len(self.block)
        self.left -= n
        return n


class _Hashing(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        self.inner, self.hash = inner, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.inner.write(data)
        return len(data)


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """An image whose layer keeps a layer worker busy for a minute or more: 1 GiB repeating a
    random 512 KiB block, as a zstd blob smaller than the worker's 1 MiB read size. The worker reads
    its whole source (and reports progress) at once, then compresses chunks at zstd level 19
    without another word."""
    work = tmp_path_factory.mktemp("slow-image")
    size = 1 << 30
    blob = work / "layer.tar.zst"
    with blob.open("wb") as out, zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as zst:
        tar_stream = _Hashing(cast(BinaryIO, zst))
        with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("pattern.bin")
            info.size, info.mode = size, 0o644
            tar.addfile(info, io.BufferedReader(_Pattern(os.urandom(512 << 10), size)))
    layout = work / "layout"
    init_layout(layout)
    layer = add_blob_file(layout, blob, OCI_LAYER["zstd"])
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + tar_stream.hash.hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": add_blob(layout, canonical_json(config), OCI_CONFIG),
        "layers": [layer],
    }
    descriptor = add_blob(layout, canonical_json(manifest), OCI_MANIFEST)
    tag_in_index(layout, descriptor, "v1")
    assert layer["size"] < 1 << 20  # read whole by the worker's first read
    return layout, descriptor["digest"], layer["size"]


def marked_processes(mark: str) -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every live process whose environment holds `mark`."""
    needle = f"{MARK}={mark}".encode()
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":  # a zombie has exited already
            found[int(entry.name)] = (int(parent), cmdline[:160])
    return found


def layer_workers(mark: str) -> list[int]:
    """Processes forked by a conversion's fork server: the layer workers."""
    processes = marked_processes(mark)
    servers = {pid for pid, (_, cmd) in processes.items() if "multiprocessing.forkserver" in cmd}
    return [pid for pid, (parent, _) in processes.items() if parent in servers]


def read_all_of(pid: int, size: int) -> bool:
    """True once `pid` has read a whole file of `size` bytes (its source blob): from then on the worker
    reports no more progress, so only acceld's own mechanisms can stop it."""
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = Path(os.readlink(fd))
            if target.is_file() and target.stat().st_size == size:
                position = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split()[1]
                if int(position) >= size:
                    return True
    except OSError:  # the process or the file went away meanwhile
        return False
    return False


def job_of(service: ServiceProcess, mark: str) -> int:
    (job,) = [pid for pid, (parent, _) in marked_processes(mark).items() if parent == service.process.pid]
    return job


def assert_none_left(mark: str, allowed: set[int], grace: float = 15) -> None:
    deadline = time.monotonic() + grace
    while (left := {p: v for p, v in marked_processes(mark).items() if p not in allowed}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not left, f"processes outlived their job: {left}"


@pytest.fixture
def mark() -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    for pid in marked_processes(value):  # a failed test must not leave its processes running
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("ending", ["job_timeout", "cancel", "sigterm", "server_kill_9", "job_kill_9"])
def test_no_conversion_process_outlives_its_job(
    ending: str,
    mark: str,
    slow_image: tuple[Path, str, int],
    registry_plain: RunningRegistry,
    tmp_path: Path,
) -> None:
    layout, digest, blob_size = slow_image
    repository = REPOSITORY.format(ending=ending)
    skopeo_copy(
        f"oci:{layout}:v1", f"docker://{registry_plain.host}/{repository}:v1", dest_registry=registry_plain
    )
    workers = {"lease_seconds": 3, "max_attempts": 1, "shutdown_grace_seconds": 0, "job_timeout": 3600}
    if ending == "job_timeout":
        # Short: the conversion never finishes first. On a busy machine an attempt may time out
        # before its layer worker is seen; the next attempt then shows one.
        workers["job_timeout"], workers["max_attempts"] = 20, 2
    config = service_config(
        tmp_path / "data", {registry_plain.host: {"plain_http": True}}, workers=workers, rules=[SLOW_RULE]
    )
    event = default_payload("PUSH_ARTIFACT", [resource(registry_plain.host, repository, digest, "v1")])
    config_file = write_config(tmp_path / "acceld.yml", config)
    with run_service(config_file, tmp_path / "serve.log", env={MARK: mark}) as service, service.api() as api:
        reply = post_event(service.url, event)
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["tasks"][0]["id"]
        wait_for(
            lambda: any(read_all_of(pid, blob_size) for pid in layer_workers(mark)),
            timeout=300,
            what="a layer worker that has read its source",
        )
        server = {service.process.pid}
        if ending == "job_timeout":
            task = wait_finished(api, task_id, timeout=120)
            assert task["status"] == "failed" and "timed out" in task["error"], json.dumps(task)
        elif ending == "cancel":
            assert api.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        elif ending == "job_kill_9":
            os.kill(job_of(service, mark), signal.SIGKILL)
            task = wait_finished(api, task_id, timeout=120)
            assert task["status"] == "failed" and "signal 9" in task["error"], task
        elif ending == "sigterm":
            service.stop()
            server = set()
        else:
            service.kill()
            server = set()
        assert_none_left(mark, server)
        if server:
            assert _status(api, task_id) in ("failed", "cancelled")


def _status(api: httpx.Client, task_id: str) -> str:
    status: str = api.get(f"/api/v1/tasks/{task_id}").json()["status"]
    return status
