"""SOCI zTOC build for the debootstrap rootfs layer, side by side with `gzip -dc LAYER > /dev/null`.

The build runs in a child process exactly as a conversion worker does (`artifact_layer_job`:
the blob digest is verified while the one pass records checkpoints, span digests and the TOC);
its peak RSS comes from `wait4`. Anchor and build alternate run by run.

    .venv/bin/python bench/bench_soci.py [--runs 3] [--layer PATH] [--span-size BYTES]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rootfs_layer() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.testimages import load_rootfs_image

    image, _ = load_rootfs_image(ROOT / ".cache" / "testimages")
    blobs = image.layout / "blobs" / "sha256"
    return max(blobs.iterdir(), key=lambda path: path.stat().st_size)


def build(layer: Path, span_size: int, output: Path) -> None:
    from acceld.convert.layer_job import LayerJob, artifact_layer_job
    from acceld.formats.driver import SourceLayer
    from acceld.formats.soci import SociDriver

    digest = "sha256:" + layer.name if len(layer.name) == 64 else _digest(layer)
    source = SourceLayer(digest, "application/vnd.oci.image.layer.v1.tar+gzip", layer.stat().st_size, "")
    job = LayerJob(source, layer, output, output.with_suffix(".work"))
    wall, cpu = time.perf_counter(), time.process_time()
    result = artifact_layer_job(SociDriver(min_layer_size=0, span_size=span_size), job)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert not isinstance(result, str), result
    output.with_suffix(".times").write_text(f"{wall} {cpu}")


def _digest(path: Path) -> str:
    with path.open("rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def timed(command: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} failed")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--build":
        build(Path(sys.argv[2]), int(sys.argv[4]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layer", type=Path)
    parser.add_argument("--span-size", type=int, default=4 << 20)
    args = parser.parse_args()
    layer = args.layer or rootfs_layer()
    anchors, builds, inner = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "ztoc"
        build_command = [sys.executable, __file__, "--build", str(layer), str(output), str(args.span_size)]
        for run in range(1, args.runs + 1):
            anchors.append(timed(["gzip", "-dc", str(layer)]))
            builds.append(timed(build_command))
            inner.append(tuple(map(float, output.with_suffix(".times").read_text().split())))
            (wall, cpu, _), (b_wall, b_cpu, peak) = anchors[-1], builds[-1]
            print(f"run {run}: gzip -dc {wall:.2f} s (CPU {cpu:.2f} s); zTOC process {b_wall:.2f} s "
                  f"(CPU {b_cpu:.2f} s), of which the build {inner[-1][0]:.2f} s (CPU {inner[-1][1]:.2f} s); "
                  f"peak RSS {peak >> 20} MB")  # fmt: skip
        size = output.stat().st_size
    wall, build_wall = statistics.median(a[0] for a in anchors), statistics.median(b[0] for b in builds)
    cpu, build_cpu = statistics.median(a[1] for a in anchors), statistics.median(b[1] for b in builds)
    print(f"layer {layer.name[:12]}: {layer.stat().st_size} bytes, span size {args.span_size}")
    print(f"median wall: gzip -dc {wall:.2f} s, zTOC build {build_wall:.2f} s ({build_wall / wall:.2f}x)")
    print(f"median CPU: gzip -dc {cpu:.2f} s, zTOC build {build_cpu:.2f} s ({build_cpu / cpu:.2f}x)")
    in_wall, in_cpu = statistics.median(i[0] for i in inner), statistics.median(i[1] for i in inner)
    print(f"median build alone (as in a preloaded worker): {in_wall:.2f} s ({in_wall / wall:.2f}x), "
          f"CPU {in_cpu:.2f} s ({in_cpu / cpu:.2f}x)")  # fmt: skip
    print(f"max peak RSS {max(b[2] for b in builds) >> 20} MB")
    print(f"zTOC {size} bytes = {100 * size / layer.stat().st_size:.2f} % of the layer")


if __name__ == "__main__":
    main()
