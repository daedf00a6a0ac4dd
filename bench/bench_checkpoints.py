"""Deflate checkpoint builders side by side on one gzip layer (default: the debootstrap rootfs layer).

Candidates: acceld's ctypes binding of the system zlib (`acceld.formats.checkpoints`),
`indexed_gzip` (C extension; `build_full_index` + `export_index`) and `rapidgzip` (its own
checkpoint placement; one thread). The anchor is `gzip -dc LAYER > /dev/null`. The PyPI
candidates are optional: install them by name to include them (`pip install indexed_gzip rapidgzip`).

    .venv/bin/python bench/bench_checkpoints.py [--layer PATH] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SPACING = 4 << 20
ROOT = Path(__file__).resolve().parent.parent


def rootfs_layer() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.testimages import load_rootfs_image

    image, _ = load_rootfs_image(ROOT / ".cache" / "testimages")
    blobs = image.layout / "blobs" / "sha256"
    return max(blobs.iterdir(), key=lambda path: path.stat().st_size)


def anchor(layer: Path) -> int:
    subprocess.run(f"gzip -dc '{layer}' > /dev/null", shell=True, check=True)
    return 0


def acceld_ctypes(layer: Path) -> int:
    from acceld.formats.checkpoints import CheckpointingReader, WindowStore, every

    with layer.open("rb") as blob, WindowStore() as windows:
        reader = CheckpointingReader(blob, every(SPACING), windows)
        reader.finish()
        return len(reader.checkpoints)


def indexed_gzip(layer: Path) -> int:
    import indexed_gzip as igz

    with igz.IndexedGzipFile(str(layer), spacing=SPACING, window_size=32768, readbuf_size=1 << 20) as gz:
        gz.build_full_index()
        gz.export_index(fileobj=io.BytesIO())
        return len(list(gz.seek_points()))


def rapidgzip(layer: Path) -> int:
    import rapidgzip as rgz

    with rgz.RapidgzipFile(str(layer), parallelization=1) as gz:
        while gz.read(1 << 20):
            pass
        index = io.BytesIO()
        gz.export_index(index)
        return len(index.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    layer = args.layer or rootfs_layer()
    candidates: dict[str, Callable[[Path], int]] = {
        "gzip -dc (anchor)": anchor,
        "acceld ctypes zlib": acceld_ctypes,
        "indexed_gzip": indexed_gzip,
        "rapidgzip (1 thread)": rapidgzip,
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.runs):
        for name, run in candidates.items():
            started = time.monotonic()
            try:
                run(layer)
            except ImportError:
                continue
            times[name].append(time.monotonic() - started)
    print(f"layer {layer} ({layer.stat().st_size} bytes), spacing {SPACING}, {args.runs} runs")
    for name, values in times.items():
        if values:
            runs = [round(v, 3) for v in values]
            print(f"{name:24} median {statistics.median(values):6.3f} s  runs {runs}")
        else:
            print(f"{name:24} not installed")


if __name__ == "__main__":
    main()
