"""Benchmark: Nydus zran (OCI-ref) conversion of the Debian rootfs image against `gzip -dc` and native Nydus.

Usage: .venv/bin/python bench/bench_nydus_zran.py [--runs 3]

The image is the test suite's debootstrap rootfs (built once into .cache/testimages, needs root).
Per run, interleaved: `gzip -dc LAYER > /dev/null` over every source layer (the anchor: one
decompression, what zran conversion cannot avoid); the zran conversion (every layer's ref blob
from the compressed layer, then the merged bootstrap layer); acceld's native Nydus conversion
(layers stream-decompressed into the blob writer as the pipeline does, then the bootstrap). Each
conversion runs in a child process so its peak RSS can be measured. Reported: median seconds, peak
RSS, and the bytes each conversion adds to the registry as a fraction of the source image.
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

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench" / "nydus-zran"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def source_layers() -> tuple[list[dict[str, object]], Path, int]:
    """The rootfs image's layer descriptors, its layout and the image size (layers + config)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.testimages import load_rootfs_image

    image, _ = load_rootfs_image(ROOT / ".cache" / "testimages")
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest.removeprefix("sha256:")).read_bytes())
    layers = manifest["layers"]
    size = sum(layer["size"] for layer in layers) + manifest["config"]["size"]
    return layers, image.layout, size


def convert(kind: str, layout: Path, layers: list[dict[str, object]], out: Path) -> None:
    """Child-process body: convert every layer and finalize; writes the output sizes as JSON."""
    import isal.igzip_threaded

    from acceld.formats.driver import LayerBlob, SourceLayer
    from acceld.formats.nydus import NydusDriver

    driver = NydusDriver(oci_ref=kind == "zran")
    blobs = []
    for number, layer in enumerate(layers):
        digest = str(layer["digest"])
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        source = SourceLayer(digest, str(layer["mediaType"]), int(str(layer["size"])), "")
        target = out / f"layer{number}"
        opener = open if kind == "zran" else lambda p, m: isal.igzip_threaded.open(p, m, threads=1)
        with opener(path, "rb") as stream, target.open("wb") as blob:  # type: ignore[operator]
            output = driver.convert_layer(stream, blob, source, out)
        size = target.stat().st_size
        blobs.append(
            LayerBlob(target, output.media_type, output.diff_id, size, output.diff_id, output.annotations)
        )
    additions = driver.finalize(blobs, out)
    added = sum(blob.size for blob in blobs) + sum(layer.size for layer in additions.extra_layers)
    (out / "sizes.json").write_text(json.dumps({"added": added, "blobs": [b.size for b in blobs]}))


def _child(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def run_anchor(layout: Path, layers: list[dict[str, object]]) -> tuple[float, float]:
    paths = [
        str(layout / "blobs" / "sha256" / str(layer["digest"]).removeprefix("sha256:")) for layer in layers
    ]
    wall, cpu, _ = _child(["bash", "-c", 'for p in "$@"; do gzip -dc "$p"; done > /dev/null', "-", *paths])
    return wall, cpu


def run_conversion(kind: str) -> tuple[float, float, int, dict[str, object]]:
    """Wall and CPU seconds, peak RSS (bytes) and output sizes of one conversion in a child process."""
    out = WORK / kind
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, cpu, peak = _child([sys.executable, __file__, "--convert", kind, str(out)])
    sizes: dict[str, object] = json.loads((out / "sizes.json").read_text())
    shutil.rmtree(out)
    return wall, cpu, peak, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--convert", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers, layout, image_size = source_layers()
    if args.convert:
        convert(args.convert[0], layout, layers, Path(args.convert[1]))
        return
    print(f"rootfs image: {len(layers)} gzip layers, {image_size / 1e6:.1f} MB (layers + config)")
    times: dict[str, list[float]] = {"gzip -dc": [], "zran": [], "native": []}
    cpus: dict[str, list[float]] = {name: [] for name in times}
    peaks: dict[str, int] = {"zran": 0, "native": 0}
    added: dict[str, int] = {}
    for _ in range(args.runs):
        wall, cpu = run_anchor(layout, layers)
        times["gzip -dc"].append(wall)
        cpus["gzip -dc"].append(cpu)
        for kind in ("zran", "native"):
            wall, cpu, peak, sizes = run_conversion(kind)
            times[kind].append(wall)
            cpus[kind].append(cpu)
            peaks[kind] = max(peaks[kind], peak)
            added[kind] = int(str(sizes["added"]))
        print("  ".join(f"{name} {times[name][-1]:.2f}s (cpu {cpus[name][-1]:.2f}s)" for name in times))
    anchor = statistics.median(times["gzip -dc"])
    anchor_cpu = statistics.median(cpus["gzip -dc"])
    for name, values in times.items():
        median, cpu = statistics.median(values), statistics.median(cpus[name])
        line = (
            f"{name:9s} median {median:6.2f}s ({median / anchor:.2f}x gzip -dc), "
            f"cpu {cpu:6.2f}s ({cpu / anchor_cpu:.2f}x)"
        )
        if name in added:
            line += (
                f", peak RSS {peaks[name] / 1e6:.0f} MB, adds {added[name] / 1e6:.2f} MB "
                f"= {100 * added[name] / image_size:.1f}% of the image"
            )
        print(line)


if __name__ == "__main__":
    main()
