"""Benchmark: first conversion of an image vs re-converting it with every layer in the layer cache.

Usage: .venv/bin/python bench/bench_convert_cache.py [--layers 4] [--layer-mb 128] [--driver D] [--runs 2]

A reproducible image (seeded layers, half text-like, half incompressible; cached under
.cache/bench) is pushed with skopeo to a real docker-registry on 127.0.0.1. Each run converts it
registry → registry through `convert_image` twice: with an empty layer cache (fetch, convert,
push), then again with the cache filled (nothing fetched or converted, blobs found in the
target). The re-conversion is also timed as the whole `acceld convert` command, process
start-up included. Target: re-conversion >= 20x faster than the first conversion.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
sys.path.insert(0, str(ROOT / "tests"))

from harness.clients import skopeo_copy  # noqa: E402
from harness.images import build_image  # noqa: E402
from harness.registry import run_registry  # noqa: E402

from acceld.config import AcceldConfig, RegistryConfig  # noqa: E402
from acceld.convert.api import ConversionRequest, ConversionResult, ConvertOptions, convert_image  # noqa: E402

WORDS = b"alpha beta gamma delta config return static include function value error import struct".split()


def _layer_tar(path: Path, seed: int, size: int) -> None:
    rng = random.Random(seed)
    text = b" ".join(rng.choices(WORDS, k=(4 << 20) // 6))
    with tarfile.open(path, "w") as archive:
        written = number = 0
        while written < size:
            length = int(2 ** rng.uniform(8, 22))
            if rng.random() < 0.5:
                start = rng.randrange(0, len(text) - min(length, len(text) - 1))
                data = text[start : start + length]
            else:
                data = rng.randbytes(length)
            info = tarfile.TarInfo(f"layer{seed}/dir{number // 50:03d}/file{number:05d}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            archive.addfile(info, io.BytesIO(data))
            written += len(data)
            number += 1


def build_layout(layers: int, layer_mb: int) -> Path:
    """An OCI layout with one image of `layers` gzip layers of about `layer_mb` MB each (cached)."""
    layout = CACHE / f"convert-cache-{layers}x{layer_mb}mb-v1"
    if (layout / "index.json").exists():
        return layout
    staging = Path(tempfile.mkdtemp(dir=CACHE))
    tars = []
    for n in range(layers):
        tar = staging / f"layer{n}.tar"
        _layer_tar(tar, n, layer_mb * 1_000_000)
        tars.append(tar)
    build_image(staging / "layout", tars, "bench")
    shutil.move(staging / "layout", layout)
    shutil.rmtree(staging)
    return layout


async def convert(
    source: str, config: AcceldConfig, driver: str, cache_dir: Path
) -> tuple[float, ConversionResult]:
    started = time.perf_counter()
    result = await convert_image(
        ConversionRequest(source=source, driver=driver), config, options=ConvertOptions(cache_dir=cache_dir)
    )
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=int, default=128)
    parser.add_argument("--driver", default="estargz")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    layout = build_layout(args.layers, args.layer_mb)
    size = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    print(f"image: {args.layers} layers, {size / 1e6:.0f} MB gzip; driver {args.driver}")
    work = Path(tempfile.mkdtemp(dir=CACHE))
    try:
        with run_registry(work / "registry") as registry:
            source = f"{registry.host}/bench/image:v1"
            skopeo_copy(f"oci:{layout}:bench", f"docker://{source}", dest_registry=registry)
            config = AcceldConfig(registries={registry.host: RegistryConfig(plain_http=True)})
            firsts, cached, commands = [], [], []
            for run in range(args.runs):
                cache_dir = work / f"cache-{run}"
                first, result = asyncio.run(convert(source, config, args.driver, cache_dir))
                again, repeat = asyncio.run(convert(source, config, args.driver, cache_dir))
                assert (result.layers_converted, repeat.layers_converted) == (args.layers, 0)
                assert repeat.layers_cached == args.layers and repeat.target_digest == result.target_digest
                started = time.perf_counter()
                subprocess.run(
                    [str(Path(sys.executable).with_name("acceld")), "convert", source, "-d", args.driver,
                     "--plain-http", "--cache-dir", str(cache_dir)],
                    check=True, capture_output=True,
                )  # fmt: skip
                command = time.perf_counter() - started
                firsts.append(first)
                cached.append(again)
                commands.append(command)
                print(f"first {first:.2f}s  cached {again:.3f}s ({first / again:.0f}x)  "
                      f"cached command {command:.2f}s ({first / command:.0f}x)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first, again, command = statistics.median(firsts), statistics.median(cached), statistics.median(commands)
    ratio = first / again
    print(
        f"median: first {first:.2f}s, cached {again:.3f}s, speed-up {ratio:.0f}x (target >= 20x); "
        f"cached command incl. start-up {command:.2f}s ({first / command:.0f}x)"
    )
    if ratio < 20:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
