"""Benchmark: 1 vs 3 `acceld serve` replicas on one PostgreSQL — conversion throughput and webhook intake.

Usage: .venv/bin/python bench/bench_fleet.py [--images 24] [--events 3000] [--connections 16]

Setup: a throwaway PostgreSQL cluster (Debian's package, Unix socket, fsync off as in the tests),
a real docker-registry, and real `acceld serve` processes, each with its own data directory (so
its own layer cache: nothing but the database is shared).

Throughput: the small `edge` test image is pushed to `--images` repositories; one PUSH_ARTIFACT
event per repository is sent (round-robin over the replicas), and the clock runs until every task
has succeeded (eStargz, `workers.concurrency` 2 per replica). Result: conversions per minute.

Intake: intake-only replicas (`workers.concurrency: 0`) receive `--events` distinct events over
`--connections` keep-alive loopback connections spread over the replicas (bench_webhook's client).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from bench_webhook import _connection, _requests  # noqa: E402
from harness.clients import skopeo_copy  # noqa: E402
from harness.registry import run_registry  # noqa: E402
from harness.testimages import load_test_images  # noqa: E402
from service_helpers import (  # noqa: E402
    API_TOKEN,
    ServiceProcess,
    create_database,
    default_payload,
    post_event,
    resource,
    run_postgres,
    run_service,
    service_config,
    write_config,
)


def _fleet(
    stack: ExitStack,
    work: Path,
    name: str,
    replicas: int,
    sources: dict[str, Any],
    database: str,
    workers: int,
) -> list[ServiceProcess]:
    started = []
    for n in range(replicas):
        config = service_config(
            work / f"{name}-data-{n}",
            sources,
            database={"url": database},
            workers={"concurrency": workers, "lease_seconds": 30, "poll_seconds": 1},
        )
        config_file = write_config(work / f"{name}-{n}.yml", config)
        started.append(stack.enter_context(run_service(config_file, work / f"{name}-{n}.log")))
    return started


def _succeeded(replica: ServiceProcess) -> tuple[int, int]:
    reply = httpx.get(
        f"{replica.url}/api/v1/tasks", params={"limit": 1}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    total = int(reply.json()["total"])
    done = httpx.get(
        f"{replica.url}/api/v1/tasks",
        params={"limit": 1, "status": "succeeded"},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    return int(done.json()["total"]), total


def _throughput(
    work: Path, host: str, sources: dict[str, Any], template: str, replicas: int, images: int, digest: str
) -> dict[str, Any]:
    database = create_database(template, f"bench_{uuid.uuid4().hex}")
    with ExitStack() as stack:
        fleet = _fleet(stack, work, f"convert{replicas}", replicas, sources, database, workers=2)
        started = time.monotonic()
        for n in range(images):
            res = [resource(host, f"bench/fleet-{n}", digest, "v1")]
            assert (
                post_event(fleet[n % replicas].url, default_payload("PUSH_ARTIFACT", res)).status_code == 202
            )
        while True:
            done, total = _succeeded(fleet[0])
            if done == images:
                break
            if time.monotonic() - started > 1800:
                raise SystemExit(f"timed out: {done}/{total} succeeded")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    return {
        "replicas": replicas,
        "conversions": images,
        "seconds": round(elapsed, 1),
        "conversions_per_min": round(images * 60 / elapsed, 1),
    }


async def _load_spread(urls: list[str], requests: list[bytes], connections: int) -> dict[str, Any]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(_connection(urls[n % len(urls)], queue, latencies, statuses) for n in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "events": len(latencies),
        "events_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
        "statuses": statuses,
    }


def _intake(
    work: Path,
    host: str,
    sources: dict[str, Any],
    template: str,
    replicas: int,
    events: int,
    connections: int,
) -> dict[str, Any]:
    database = create_database(template, f"bench_{uuid.uuid4().hex}")
    with ExitStack() as stack:
        fleet = _fleet(stack, work, f"intake{replicas}", replicas, sources, database, workers=0)
        urls = [replica.url for replica in fleet]
        asyncio.run(_load_spread(urls, _requests(host, 200, f"warmup{replicas}"), connections))
        result = asyncio.run(_load_spread(urls, _requests(host, events, f"load{replicas}"), connections))
    return {"replicas": replicas, **result}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"cpus: {os.cpu_count()}  load average: {load:.1f}")
    image = load_test_images(ROOT / ".cache" / "testimages").edge
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, run_postgres() as template:
        work = Path(tmp)
        with run_registry(work / "registry") as registry:
            sources = {registry.host: {"plain_http": True}}
            for n in range(args.images):
                skopeo_copy(image.ref, f"docker://{registry.host}/bench/fleet-{n}:v1", dest_registry=registry)
            for replicas in (1, 3):
                print(
                    "intake",
                    _intake(work, registry.host, sources, template, replicas, args.events, args.connections),
                )
            for replicas in (1, 3):
                print(
                    "throughput",
                    _throughput(work, registry.host, sources, template, replicas, args.images, image.digest),
                )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
