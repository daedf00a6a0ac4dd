"""Benchmark: eStargz conversion of a >= 500 MB layer tar, side by side with the Go reference builder.

Usage: .venv/bin/python bench/bench_estargz.py [--size-mb 600] [--runs 2] [--level 9] [--workers N]

The layer (cached under .cache/bench) is built offline: regular files from this machine's /usr
(sorted walk, about 65 %), then seeded synthetic files — incompressible random data (about 20 %,
like compressed assets) and source-like text (about 15 %). The real part depends on the machine's
/usr; the script prints the tar's sha256 so runs can be compared.

Both converters read the same plain tar file and write the blob to disk, interleaved run by run:
acceld's writer (`write_estargz`, default 4 MiB chunks, `workers` threads) in a child process, and
`esgz build` (Go estargz library) with GOMAXPROCS=2 (two parts, both cores) at the same level. Peak
RSS comes from wait4 of each child. acceld's output is checked with `esgz verify` once (not timed).
Targets (issue 3): acceld >= 3x faster, output within 3 % of Go's size, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
ESGZ = ROOT / ".cache" / "esgz" / "esgz"
ESGZ_BUILD_SCRIPT = ROOT.parent / "shared" / "tools" / "esgz" / "build.sh"
USR_SHARE = 0.65
RANDOM_SHARE = 0.20
TOKENS = (
    b"int", b"return", b"static", b"const", b"char", b"void", b"struct", b"if", b"else", b"for",
    b"while", b"buffer", b"length", b"offset", b"error", b"NULL", b"self", b"def", b"import", b"value",
    b"(", b")", b"{", b"}", b";", b",", b"=", b"==", b"->", b"0", b"1", b"\n", b"\n\t", b"\n    ",
)  # fmt: skip


def _usr_files() -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk("/usr"):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink() and os.access(path, os.R_OK):
                files.append(path)
    return files


def _synthetic_text(rng: random.Random, size: int) -> bytes:
    identifiers = [b"%s_%d" % (rng.choice(TOKENS[:20]), rng.randrange(500)) for _ in range(2000)]
    vocabulary = list(TOKENS) + identifiers
    return b" ".join(rng.choices(vocabulary, k=size // 3))[:size]


def generate_layer(size_mb: int) -> Path:
    """The cached benchmark tar of at least `size_mb` MB."""
    path = CACHE / f"estargz-layer-{size_mb}mb-v1.tar"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    target = size_mb * 1_000_000
    rng = random.Random(20261128)
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        written = 0
        for source in _usr_files():
            if written >= target * USR_SHARE:
                break
            try:
                archive.add(str(source), arcname=str(source).lstrip("/"), recursive=False)
            except OSError:
                continue
            written += source.stat().st_size + 512
        number = 0
        while written < target:
            size = int(2 ** rng.uniform(8, 23))  # 256 B .. 8 MiB
            incompressible = rng.random() < RANDOM_SHARE / (1 - USR_SHARE)
            data = rng.randbytes(size) if incompressible else _synthetic_text(rng, size)
            kind = "asset" if incompressible else "src"
            info = tarfile.TarInfo(f"opt/app/{number // 50:03d}/{kind}{number}")
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
            written += len(data) + 512
            number += 1
    partial.rename(path)
    return path


def convert_only(tar: Path, output: Path, level: int, workers: int | None) -> None:
    """Child-process body: the driver's writer on the plain tar, as the pipeline runs it."""
    from acceld.formats.estargz.writer import WriterOptions, write_estargz

    options = WriterOptions(compression_level=level, workers=workers or os.cpu_count() or 1)
    with tar.open("rb") as source, output.open("wb") as out:
        result = write_estargz(source, out, output.parent, options)
    output.with_suffix(".toc-digest").write_text(result.toc_digest)


def _timed_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--level", type=int, default=9)
    parser.add_argument("--workers", type=int, default=None, help="acceld threads (default: CPU count)")
    parser.add_argument("--convert", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        tar, output = args.convert
        convert_only(tar, output, args.level, args.workers)
        return
    if not ESGZ.exists():
        subprocess.run([str(ESGZ_BUILD_SCRIPT), str(ESGZ)], check=True)
    tar = generate_layer(args.size_mb)
    digest = hashlib.sha256()
    with tar.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    ours, theirs = CACHE / "estargz-bench.esgz", CACHE / "estargz-bench-go.esgz"
    size_mb = tar.stat().st_size / 1e6
    print(f"layer: {tar} ({size_mb:.1f} MB, sha256 {digest.hexdigest()[:16]}…), level {args.level}")
    acceld_argv = [sys.executable, __file__, "--level", str(args.level), "--convert", str(tar), str(ours)]
    if args.workers:
        acceld_argv[2:2] = ["--workers", str(args.workers)]
    go_argv = [str(ESGZ), "build", str(tar), str(theirs), "0", "gzip"]
    go_env = {**os.environ, "GOMAXPROCS": "2"}
    results: dict[str, list[tuple[float, int, float]]] = {"acceld": [], "go": []}
    for run in range(args.runs):
        results["acceld"].append(_timed_child(acceld_argv))
        results["go"].append(_timed_child(go_argv, go_env))
        ours_run, go_run = results["acceld"][-1], results["go"][-1]
        print(f"run {run + 1}: acceld {ours_run[0]:.1f} s ({ours_run[2]:.1f} s CPU), "
              f"go {go_run[0]:.1f} s ({go_run[2]:.1f} s CPU)")  # fmt: skip
    verified = subprocess.run(
        [str(ESGZ), "verify", str(ours), ours.with_suffix(".toc-digest").read_text()],
        capture_output=True, text=True,
    )  # fmt: skip
    if verified.returncode != 0:
        raise SystemExit(f"esgz verify failed: {verified.stderr}")
    summary = {}
    for name, blob in (("acceld", ours), ("go", theirs)):
        seconds = statistics.median(t for t, _, _ in results[name])
        summary[name] = {
            "seconds": round(seconds, 2),
            "cpu_seconds": round(statistics.median(c for _, _, c in results[name]), 2),
            "mb_per_s": round(tar.stat().st_size / 1e6 / seconds, 1),
            "output_bytes": blob.stat().st_size,
            "peak_rss_mb": round(max(r for _, r, _ in results[name]) / 1e6, 1),
        }
    speedup = summary["go"]["seconds"] / summary["acceld"]["seconds"]
    cpu_ratio = summary["go"]["cpu_seconds"] / summary["acceld"]["cpu_seconds"]
    size_delta = summary["acceld"]["output_bytes"] / summary["go"]["output_bytes"] - 1
    print(json.dumps(summary, indent=2))
    rss = summary["acceld"]["peak_rss_mb"]
    print(f"speedup {speedup:.2f}x wall (target >= 3x), {cpu_ratio:.2f}x CPU time; "
          f"size {size_delta:+.2%} vs go (target within 3 %); "
          f"acceld peak RSS {rss} MB (target < 300 MB); esgz verify: OK")  # fmt: skip
    for blob in (ours, theirs, ours.with_suffix(".toc-digest")):
        blob.unlink()


if __name__ == "__main__":
    main()
