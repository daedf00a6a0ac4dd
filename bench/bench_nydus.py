"""Benchmark: Nydus conversion of a >= 500 MB gzip layer against `gzip -dc | zstd -3 -T1`.

Usage: .venv/bin/python bench/bench_nydus.py [--size-mb 500] [--runs 2]

The layer is generated reproducibly (seeded) and cached under .cache/bench. Both commands run
side by side (interleaved) in the same invocation; the conversion runs in a child process so its
peak RSS can be measured. Targets: conversion time <= 2x the anchor, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import isal.igzip
import isal.igzip_threaded

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
WORDS = [
    b"alpha", b"beta", b"gamma", b"delta", b"config", b"return", b"static", b"include", b"function",
    b"value", b"error", b"for", b"if", b"else", b"while", b"import", b"struct", b"buffer", b"size",
    b"0x1f", b"(", b")", b"{", b"}", b";", b"=", b"==", b"+", b"\n", b"\n    ", b"self", b"None",
]  # fmt: skip
TEXT_POOL_SIZE = 64 << 20


def _text_pool(rng: random.Random) -> bytes:
    """Source-code-like text, about 3:1 under gzip."""
    pieces = rng.choices(WORDS, k=TEXT_POOL_SIZE // 4)
    return b" ".join(pieces)[:TEXT_POOL_SIZE]


def _file_sizes(rng: random.Random) -> list[int]:
    """Log-uniform file sizes from 200 B to 48 MiB (below the text pool size), like a root filesystem."""
    return [int(2 ** rng.uniform(7.6, 25.6)) for _ in range(40)]


def generate_layer(size_mb: int) -> Path:
    """A reproducible gzip layer of at least `size_mb` MB: half text-like, half incompressible."""
    path = CACHE / f"nydus-layer-{size_mb}mb-v1.tar.gz"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261128)
    pool = _text_pool(rng)
    partial = path.with_suffix(".partial")
    with (
        isal.igzip.open(partial, "wb", compresslevel=2) as raw,
        tarfile.open(fileobj=raw, mode="w|") as archive,
    ):
        number = 0
        while raw.fileobj is not None and raw.fileobj.tell() < size_mb * 1_000_000:  # type: ignore[attr-defined]
            directory = f"usr/lib/pkg{number // 40:04d}"
            for size in _file_sizes(rng):
                if rng.random() < 0.5:
                    start = rng.randrange(0, len(pool) - size)
                    data = pool[start : start + size]
                else:
                    data = rng.randbytes(size)
                info = tarfile.TarInfo(f"{directory}/file{number:06d}.bin")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                archive.addfile(info, io.BytesIO(data))
                number += 1
    partial.rename(path)
    return path


def convert_only(layer: Path, output: Path) -> None:
    """Child-process body: stream-decompress the gzip layer and convert it (what the pipeline does)."""
    from acceld.formats.driver import SourceLayer
    from acceld.formats.nydus import NydusDriver

    source = SourceLayer("sha256:" + "0" * 64, "application/vnd.oci.image.layer.v1.tar+gzip", 0, "")
    with isal.igzip_threaded.open(layer, "rb", threads=1) as tar, output.open("wb") as out:
        NydusDriver().convert_layer(tar, out, source, output.parent)  # type: ignore[arg-type]


def run_anchor(layer: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["bash", "-c", f"set -o pipefail; gzip -dc '{layer}' | zstd -3 -T1 > /dev/null"], check=True
    )
    return time.perf_counter() - started


def run_conversion(layer: Path) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one conversion in a child process."""
    output = CACHE / "nydus-bench.blob"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--convert", str(layer), str(output)])
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("conversion failed")
    output.unlink()
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--convert", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        convert_only(*args.convert)
        return
    layer = generate_layer(args.size_mb)
    print(f"layer {layer.name}: {layer.stat().st_size / 1e6:.0f} MB gzip")
    anchors, conversions, peaks = [], [], []
    for _ in range(args.runs):
        anchors.append(run_anchor(layer))
        seconds, peak = run_conversion(layer)
        conversions.append(seconds)
        peaks.append(peak)
        print(f"anchor {anchors[-1]:.2f}s  nydus {seconds:.2f}s  peak RSS {peak / 1e6:.0f} MB")
    anchor, nydus = statistics.median(anchors), statistics.median(conversions)
    ratio = nydus / anchor
    print(
        f"median: anchor {anchor:.2f}s, nydus {nydus:.2f}s, ratio {ratio:.2f} (target <= 2.0), "
        f"max peak RSS {max(peaks) / 1e6:.0f} MB (target < 300)"
    )
    if ratio > 2.0 or max(peaks) >= 300e6:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
