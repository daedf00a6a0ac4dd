"""Benchmark: zstd:chunked conversion throughput of a >= 500 MB layer tar, next to `zstd -3 -T1`.

Usage: .venv/bin/python bench/bench_zstdchunked.py [--layer nydus|estargz] [--runs 2] [--verify]

Layers (generated offline, cached under .cache/bench): `nydus` is the seeded synthetic layer of
bench/bench_nydus.py (500 MB gzip, decompressed once to a cached 867 MB tar); `estargz` is the
600 MB tar of bench/bench_estargz.py (mostly real files from this machine's /usr). Only the
conversion is timed: the driver reads the tar and writes the blob to disk, in a child process
(for its peak RSS and CPU time). The
anchor is plain single-frame `zstd -3 -T1` of the same tar, run interleaved with it. Target:
>= 60 MB/s of tar input (containers/storage's Go writer: 36.7 MB/s at level 3, same machine kind).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import isal.igzip_threaded

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_estargz
import bench_nydus
from bench_nydus import CACHE

TARGET_MB_S = 60.0


def source_tar(kind: str) -> Path:
    if kind == "estargz":
        return bench_estargz.generate_layer(600)
    layer = bench_nydus.generate_layer(500)
    tar = CACHE / (layer.name.removesuffix(".gz"))
    if not tar.exists():
        partial = tar.with_suffix(".partial")
        with isal.igzip_threaded.open(layer, "rb", threads=1) as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        partial.rename(tar)
    return tar


def convert_only(tar: Path, output: Path) -> None:
    """Child-process body: convert the tar with the driver, as the pipeline does."""
    from acceld.formats.driver import SourceLayer
    from acceld.formats.zstdchunked import ZstdChunkedDriver

    source = SourceLayer("sha256:" + "0" * 64, "application/vnd.oci.image.layer.v1.tar", 0, "")
    work = output.parent / "zstdchunked-work"
    work.mkdir(exist_ok=True)
    with tar.open("rb") as stream, output.open("wb") as out:
        result = ZstdChunkedDriver().convert_layer(stream, out, source, work)
    output.with_suffix(".annotations").write_text(json.dumps(dict(result.annotations)))


def verify(tar: Path, output: Path) -> None:
    """Check the blob with the independent reader against the source tar (not timed)."""
    from acceld.formats.zstdchunked.reader import ZstdChunkedReader

    annotations = json.loads(output.with_suffix(".annotations").read_text())
    with tar.open("rb") as stream:
        report = ZstdChunkedReader(output, annotations).verify(stream)
    print(f"verified: {report}")


def run_anchor(tar: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["zstd", "-3", "-T1", "-q", "-c", str(tar)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_conversion(tar: Path, check: bool) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, peak RSS (bytes) and output size of one conversion (child process)."""
    output = CACHE / "zstdchunked-bench.blob"
    argv = [sys.executable, __file__, "--convert", str(tar), str(output)]
    started = time.perf_counter()
    child = subprocess.Popen(argv)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("conversion failed")
    size = output.stat().st_size
    if check:
        verify(tar, output)
    output.unlink()
    output.with_suffix(".annotations").unlink()
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, size


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--layer", choices=("nydus", "estargz"), default="nydus")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--verify", action="store_true", help="check the first output with the reader")
    parser.add_argument("--convert", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        convert_only(*args.convert)
        return
    tar = source_tar(args.layer)
    megabytes = tar.stat().st_size / 1e6
    print(f"layer {tar.name}: {megabytes:.0f} MB tar, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    anchors, conversions = [], []
    for run in range(args.runs):
        anchors.append(run_anchor(tar))
        seconds, cpu, peak, size = run_conversion(tar, check=args.verify and run == 0)
        conversions.append(seconds)
        print(
            f"anchor zstd -3 -T1 {anchors[-1]:.2f}s ({megabytes / anchors[-1]:.0f} MB/s)  "
            f"zstd:chunked {seconds:.2f}s ({megabytes / seconds:.0f} MB/s, CPU {cpu:.1f}s, "
            f"{size / 1e6:.0f} MB out, peak RSS {peak / 1e6:.0f} MB)"
        )
    anchor, converted = statistics.median(anchors), statistics.median(conversions)
    throughput = megabytes / converted
    print(
        f"median: anchor {anchor:.2f}s ({megabytes / anchor:.0f} MB/s), zstd:chunked {converted:.2f}s "
        f"= {throughput:.1f} MB/s (target >= {TARGET_MB_S:.0f})"
    )
    if throughput < TARGET_MB_S:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
