"""Push+pull throughput of one large blob: `acceld copy` versus `skopeo copy`, same image, same run.

Builds an OCI layout holding one image with a single incompressible gzip layer of --size-mb MB,
starts a loopback docker-registry (plain HTTP, no auth) per tool and run, and times for each tool:
push (oci: layout → registry) and pull (registry → fresh oci: layout). Each run uses fresh
registries, so no tool can skip or mount a blob it pushed before. Runs alternate between the tools.

    .venv/bin/python bench/bench_transfer.py [--size-mb 512] [--runs 3]

Both tools run as commands, so each timing includes process start-up; the script also times a
no-op command of each tool (`inspect` of the local layout) to show that fixed cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from harness.clients import policy_file  # noqa: E402  (the test harness starts the registries)
from harness.registry import run_registry  # noqa: E402

from acceld.oci import mediatypes as mt  # noqa: E402
from acceld.oci.digest import Digester, sha256_digest  # noqa: E402
from acceld.oci.models import Descriptor, RawManifest  # noqa: E402
from acceld.registry.layout import OCILayout  # noqa: E402

ACCELD = str(Path(sys.executable).parent / "acceld")


def write_gzip_layer(path: Path, size: int) -> Descriptor:
    """A valid gzip stream of random bytes (stored blocks: incompressible, fast to make)."""
    digester = Digester()
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
    with path.open("wb") as out:
        remaining = size
        while remaining:
            piece = os.urandom(min(remaining, 8 << 20))
            remaining -= len(piece)
            for data in (compressor.compress(piece), compressor.flush() if not remaining else b""):
                digester.update(data)
                out.write(data)
    return Descriptor(mediaType=mt.OCI_LAYER_GZIP, digest=digester.digest, size=digester.size)


async def build_layout(root: Path, size: int) -> int:
    layout = OCILayout.open(root / "src", create=True)
    layer_file = root / "layer.gz"
    layer = write_gzip_layer(layer_file, size)
    await layout.put_blob(layer, layer_file)
    layer_file.unlink()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"unused")]},
        }
    ).encode()
    config_desc = Descriptor(mediaType=mt.OCI_CONFIG, digest=sha256_digest(config), size=len(config))
    await layout.put_blob(config_desc, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_desc.to_dict(),
        "layers": [layer.to_dict()],
    }
    await layout.put_manifest(RawManifest.from_bytes(json.dumps(manifest).encode()), "big")
    return layer.size


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def commands(tool: str, layout: Path, host: str, pulled: Path) -> tuple[list[str], list[str]]:
    remote = f"{host}/bench/{tool}:big"
    if tool == "acceld":
        return (
            [ACCELD, "copy", "--plain-http", f"oci:{layout}:big", remote],
            [ACCELD, "copy", "--plain-http", remote, f"oci:{pulled}:big"],
        )
    skopeo = ["skopeo", "--policy", str(policy_file(REPO_ROOT / ".cache" / "skopeo")), "copy", "--quiet"]
    return (
        [*skopeo, "--dest-tls-verify=false", f"oci:{layout}:big", f"docker://{remote}"],
        [*skopeo, "--src-tls-verify=false", f"docker://{remote}", f"oci:{pulled}:big"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"acceld": [], "skopeo": []}
    cpu: dict[str, list[float]] = {"acceld": [], "skopeo": []}
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        root = Path(tmp)
        size = asyncio.run(build_layout(root, args.size_mb * 1_000_000))
        print(f"blob: {size / 1e6:.1f} MB (gzip, incompressible); {args.runs} runs per tool")
        for run in range(args.runs):
            for tool in ("acceld", "skopeo") if run % 2 == 0 else ("skopeo", "acceld"):
                with ExitStack() as stack:
                    scratch = root / f"{tool}-{run}"
                    stack.callback(shutil.rmtree, scratch, ignore_errors=True)
                    registry = stack.enter_context(run_registry(scratch / "registry"))
                    push, pull = commands(tool, root / "src", registry.host, scratch / "pulled")
                    (push_s, push_cpu), (pull_s, pull_cpu) = timed(push), timed(pull)
                results[tool].append((push_s, pull_s))
                cpu[tool].append(push_cpu + pull_cpu)
                print(
                    f"run {run + 1} {tool:>6}: push {push_s:6.2f} s, pull {pull_s:6.2f} s, "
                    f"client CPU {push_cpu + pull_cpu:5.2f} s, load {os.getloadavg()[0]:.1f}"
                )
        noop = {
            "acceld": [ACCELD, "inspect", "--raw", f"oci:{root / 'src'}:big"],
            "skopeo": ["skopeo", "inspect", "--raw", f"oci:{root / 'src'}:big"],
        }
        startup = {tool: statistics.median(timed(argv)[0] for _ in range(3)) for tool, argv in noop.items()}
        print(
            f"start-up (inspect of the local layout, median of 3): acceld {startup['acceld']:.2f} s, "
            f"skopeo {startup['skopeo']:.2f} s"
        )
    print()
    print("tool    push MB/s  pull MB/s  push+pull MB/s  client CPU s  (medians)")
    combined: dict[str, float] = {}
    for tool, times in results.items():
        push_rate = statistics.median(size / 1e6 / p for p, _ in times)
        pull_rate = statistics.median(size / 1e6 / q for _, q in times)
        combined[tool] = statistics.median(2 * size / 1e6 / (p + q) for p, q in times)
        cpu_s = statistics.median(cpu[tool])
        print(f"{tool:<7} {push_rate:9.1f}  {pull_rate:9.1f}  {combined[tool]:14.1f}  {cpu_s:12.2f}")
    print(f"acceld / skopeo push+pull throughput: {combined['acceld'] / combined['skopeo']:.2f}x")
    transfer = {
        tool: statistics.median(2 * size / 1e6 / (p + q - 2 * startup[tool]) for p, q in times)
        for tool, times in results.items()
    }
    print(
        f"estimate without start-up (no-op time subtracted per command): "
        f"acceld {transfer['acceld']:.1f} MB/s, "
        f"skopeo {transfer['skopeo']:.1f} MB/s, {transfer['acceld'] / transfer['skopeo']:.2f}x"
    )


if __name__ == "__main__":
    main()
