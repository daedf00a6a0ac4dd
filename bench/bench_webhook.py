"""Benchmark: webhook intake throughput and latency of a real `acceld serve`, idle and under load.

Usage: .venv/bin/python bench/bench_webhook.py [--events 5000] [--connections 16] [--layer-mb 48]

Phase 1 (idle): an intake-only service (`workers.concurrency: 0`, real SQLite under a temp dir,
synchronous=FULL commits) receives `--events` distinct Harbor PUSH_ARTIFACT events (Default
format) over `--connections` keep-alive loopback connections; every event is committed as a new
task before its 202. Targets: >= 1000 events/s and p99 < 50 ms.

Phase 2 (busy): a service with two workers converts two large images (seeded layers, pushed
with skopeo to a real docker-registry) to eStargz; once both conversions run, the same load is
sent again. Target: p99 < 500 ms while the conversions keep both cores busy.

The load generator is a minimal asyncio HTTP/1.1 client (pre-encoded requests) so the client
costs little CPU next to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from harness.clients import skopeo_copy  # noqa: E402
from harness.images import build_image  # noqa: E402
from harness.registry import run_registry  # noqa: E402
from service_helpers import (  # noqa: E402
    API_TOKEN,
    WEBHOOK_SECRET,
    default_payload,
    resource,
    run_service,
    service_config,
    write_config,
)


def _layer_tar(path: Path, seed: int, size: int) -> None:
    """Text-like, compressible files: converting them costs real CPU (gzip + eStargz chunks)."""
    rng = random.Random(seed)
    words = b"alpha beta gamma delta config return static include function value error import".split()
    text = b" ".join(rng.choices(words, k=(4 << 20) // 6))
    with tarfile.open(path, "w") as archive:
        written = number = 0
        while written < size:
            length = int(2 ** rng.uniform(10, 20))
            start = rng.randrange(0, len(text) - length)
            data = text[start : start + length]
            info = tarfile.TarInfo(f"data{seed}/dir{number // 50:03d}/file{number:05d}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            archive.addfile(info, io.BytesIO(data))
            written += len(data)
            number += 1


def _bench_image(layer_mb: int, seed: int) -> Any:
    layout = CACHE / f"webhook-{layer_mb}mb-{seed}"
    marker = layout / "image.json"
    if marker.exists():
        return json.loads(marker.read_text())
    layout.mkdir(parents=True, exist_ok=True)
    tar_path = layout / "layer.tar"
    _layer_tar(tar_path, seed, layer_mb << 20)
    image = build_image(layout / "oci", [tar_path], "image")
    tar_path.unlink()
    record = {"ref": image.ref, "digest": image.digest}
    marker.write_text(json.dumps(record))
    return record


def _requests(host: str, events: int, tag: str) -> list[bytes]:
    encoded = []
    for n in range(events):
        digest = "sha256:" + hashlib.sha256(f"{tag}-{n}".encode()).hexdigest()
        body = json.dumps(
            default_payload("PUSH_ARTIFACT", [resource(host, "bench/load", digest, f"v{n}")])
        ).encode()
        head = (
            f"POST /api/v1/conversions HTTP/1.1\r\nHost: acceld\r\nContent-Type: application/json\r\n"
            f"Authorization: {WEBHOOK_SECRET}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        encoded.append(head + body)
    return encoded


async def _connection(url: str, queue: list[bytes], latencies: list[float], statuses: dict[int, int]) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(url: str, requests: list[bytes], connections: int) -> dict[str, Any]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(*(_connection(url, queue, latencies, statuses) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "events": len(latencies),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "statuses": statuses,
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(url: str, pid: int, requests: list[bytes], connections: int) -> dict[str, Any]:
    cpu_before = _cpu_seconds(pid)
    result = asyncio.run(_load(url, requests, connections))
    result["server_cpu_ms_per_event"] = round((_cpu_seconds(pid) - cpu_before) * 1000 / len(requests), 3)
    return result


def _running_tasks(url: str) -> int:
    reply = httpx.get(
        f"{url}/api/v1/tasks", params={"status": "running"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    return int(reply.json()["total"])


def _cpu_busy(seconds: float) -> float:
    """Fraction of both cores busy over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--layer-mb", type=int, default=48)
    parser.add_argument("--phase", choices=["idle", "busy", "both"], default="both")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}  events: {args.events}  connections: {args.connections}")

    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        work = Path(tmp)
        with run_registry(work / "registry") as registry:
            sources = {registry.host: {"plain_http": True}}

            if args.phase in ("idle", "both"):
                _idle_phase(work, registry.host, sources, args)
            if args.phase in ("busy", "both"):
                _busy_phase(work, registry, sources, args)


def _idle_phase(work: Path, host: str, sources: dict[str, Any], args: argparse.Namespace) -> None:
    idle = service_config(work / "idle", sources, workers={"concurrency": 0})
    with run_service(write_config(work / "idle.yml", idle), work / "idle.log") as service:
        asyncio.run(_load(service.url, _requests(host, 200, "warmup"), args.connections))
        result = _measured(
            service.url,
            service.process.pid,
            _requests(host, args.events, "idle"),
            args.connections,
        )
    print(f"idle: {json.dumps(result)}")


def _busy_phase(work: Path, registry: Any, sources: dict[str, Any], args: argparse.Namespace) -> None:
    images = [_bench_image(args.layer_mb, seed) for seed in (1, 2)]
    for n, image in enumerate(images):
        skopeo_copy(image["ref"], f"docker://{registry.host}/bench/big{n}:v1", dest_registry=registry)
    busy = service_config(work / "busy", sources, workers={"concurrency": 2, "lease_seconds": 60})
    with run_service(write_config(work / "busy.yml", busy), work / "busy.log") as service:
        for n, image in enumerate(images):
            payload = default_payload(
                "PUSH_ARTIFACT", [resource(registry.host, f"bench/big{n}", image["digest"], "v1")]
            )
            reply = httpx.post(
                f"{service.url}/api/v1/conversions",
                json=payload,
                headers={"Authorization": WEBHOOK_SECRET},
            )
            assert reply.status_code == 202, reply.text
        while _running_tasks(service.url) < 2:
            time.sleep(0.2)
        time.sleep(2)  # both conversions past their start-up
        busy_before = _cpu_busy(2)
        result = _measured(
            service.url,
            service.process.pid,
            _requests(registry.host, args.events, "busy"),
            args.connections,
        )
        still_running = _running_tasks(service.url)
    print(
        f"busy: {json.dumps(result)}  cpu busy before load: {busy_before:.0%}  "
        f"conversions still running after: {still_running}"
    )


if __name__ == "__main__":
    main()
