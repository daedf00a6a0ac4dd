"""Benchmark: whole `acceld convert` processes on a real root filesystem image against the real tools.

Usage: .venv/bin/python bench/bench_rootfs.py [--runs 3] [--only estargz,nydus,zstdchunked] [--startup]
       .venv/bin/python bench/bench_rootfs.py --many-files 1000000   # one layer of N small files
       .venv/bin/python bench/bench_rootfs.py --many-layers 256      # N layers of one tiny file each

The image (built once into .cache/bench/rootfs-py-v1, needs the test suite's cached images): the
debootstrap bookworm minbase layer of `load_rootfs_image`, a layer adding python3.11 (the entries of
the test suite's python base tar, `tests/harness/container.py`, that the minbase tree lacks or has
with other contents) and the small upper layer (gzip layers, an OCI layout).

Per run, interleaved in this order, each a whole process tree started from this script:
  `acceld convert oci:SRC:rootfs oci:OUT -d estargz --no-cache`, then `esgz build` (Go
  estargz.Build, GOMAXPROCS=2, default 4 MiB chunks, gzip level 9 like acceld's default) on every
  gzip layer; `acceld convert ... -d nydus --no-cache`, then `gzip -dc LAYER | zstd -3 -T1` over the
  same layers; `acceld convert ... -d zstdchunked --no-cache`, then skopeo 1.18
  `copy --dest-compress-format zstd:chunked` of the same layout inside the Debian trixie chroot the
  podman tests build (reported as unavailable when that chroot is missing).
Every command runs under a child subreaper that waits for its whole tree: CPU is the tree's user +
system time (workers and fork server included); peak RSS is the largest sum of the tree's
proportional set sizes (PSS: pages shared by the fork server and its forked workers counted once),
sampled every 50 ms from /proc. Output size is the sum of the converted layer blobs.
The sampling costs CPU on the machine it measures, and more the larger the tree is (3-4 ms a sample
for acceld's fork server and workers, under 2 ms for `gzip | zstd`: ~0.1 s of CPU per Nydus run,
~0.4 s per zstd:chunked run), so the timed runs are not sampled: after them, one more run of each
command measures its peak RSS.
"""

from __future__ import annotations

import argparse
import compileall
import ctypes
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
IMAGE = CACHE / "rootfs-py-v2"
WORK = CACHE / "rootfs-work"
ACCELD = ROOT / ".venv" / "bin" / "acceld"
ESGZ = ROOT / ".cache" / "bin" / "esgz"
CHROOT = Path("/var/tmp/acceld-test-trixie-podman")
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Measure:
    wall: float
    cpu: float
    peak_rss: int


def _tar_members(path: Path) -> dict[str, tuple[object, ...]]:
    """name (no ./) -> (type, mode, size, linkname, content sha256) of every entry."""
    members: dict[str, tuple[object, ...]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            data = tar.extractfile(info) if info.isfile() else None
            digest = hashlib.sha256(data.read()).hexdigest() if data else ""
            members[info.name.removeprefix("./").rstrip("/")] = (
                info.type,
                info.mode,
                info.size,
                info.linkname,
                digest,
            )
    return members


def _python_layer(lower: Path, full: Path, out: Path) -> Path:
    """The entries of `full` that `lower` lacks or has with other contents (a layer adding python3),
    plus the files their hardlinks name (a layer's hardlinks must point into the layer)."""
    base = _tar_members(lower)
    wanted: set[str] = set()
    with tarfile.open(full) as source:
        for info in source:
            name = info.name.removeprefix("./").rstrip("/")
            if not name or name.startswith(("var/cache/", "var/log/", "tmp/")):
                continue
            data = source.extractfile(info) if info.isfile() else None
            digest = hashlib.sha256(data.read()).hexdigest() if data else ""
            if base.get(name) == (info.type, info.mode, info.size, info.linkname, digest):
                continue
            if info.isdir() and name in base:
                continue
            wanted.add(name)
            if info.islnk():
                wanted.add(info.linkname.removeprefix("./"))
    with tarfile.open(full) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in source:
            name = info.name.removeprefix("./").rstrip("/")
            if name not in wanted:
                continue
            data = source.extractfile(info) if info.isfile() else None
            info.name = name
            if info.islnk():
                info.linkname = info.linkname.removeprefix("./")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, data)
    return out


def build_image() -> Path:
    """The OCI layout of the benchmark image (cached)."""
    if (IMAGE / "done").exists():
        return IMAGE / "layout"
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.container import PYTHON_BASE_RECIPE
    from harness.images import build_image as write_layout
    from harness.testimages import load_rootfs_image

    _, tars = load_rootfs_image(ROOT / ".cache" / "testimages")
    python_tar = ROOT / ".cache" / "testimages" / PYTHON_BASE_RECIPE / "rootfs.tar"
    if not python_tar.exists():
        raise SystemExit(f"{python_tar} missing: run tests/test_container.py once to build it")
    shutil.rmtree(IMAGE, ignore_errors=True)
    IMAGE.mkdir(parents=True)
    middle = _python_layer(tars["rootfs-lower"], python_tar, IMAGE / "python3.tar")
    write_layout(IMAGE / "layout", [tars["rootfs-lower"], middle, tars["rootfs-upper"]], "rootfs")
    middle.unlink()
    (IMAGE / "done").write_text("")
    return IMAGE / "layout"


def layers_of(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].removeprefix("sha256:")).read_bytes())
    return [blobs / layer["digest"].removeprefix("sha256:") for layer in manifest["layers"]]


def tar_stats(layers: list[Path]) -> tuple[int, int]:
    size = entries = 0
    for path in layers:
        with tarfile.open(path, "r:gz") as tar:
            entries += sum(1 for _ in tar)
        size += int(
            subprocess.run(
                f"gzip -dc {path} | wc -c", shell=True, capture_output=True, text=True, check=True
            ).stdout
        )
    return size, entries


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (fork server, forked workers) counted once in a sum."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_pss(root: int) -> int:
    """Sum of the proportional set sizes of `root`'s descendants (this process is their subreaper)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(parent, []).append(int(entry))
    total, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        total += _pss(pid)
        todo.extend(children.get(pid, []))
    return total


def measure(command: list[str] | str, env: dict[str, str] | None = None, memory: bool = True) -> Measure:
    """Run `command` in a subreaper child that waits for its whole tree; wall, tree CPU, and peak
    tree RSS when `memory` (otherwise 0: the sampling would take CPU from the command)."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        with open(WORK / "stderr.log", "wb") as errors:
            child = subprocess.Popen(
                command, shell=isinstance(command, str), env=env, stdout=subprocess.DEVNULL, stderr=errors
            )
        code = child.wait()
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        os.write(write_end, json.dumps([code, usage.ru_utime + usage.ru_stime]).encode())
        os._exit(0)
    os.close(write_end)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, _tree_pss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    if memory:
        sampler.start()
    os.waitpid(pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    if memory:
        sampler.join()
    with os.fdopen(read_end) as result:
        code, cpu = json.loads(result.read())
    if code != 0:
        errors = (WORK / "stderr.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"{command} failed with {code}:\n{errors}")
    return Measure(wall, cpu, peak)


def blob_sizes(layout: Path) -> int:
    """Sum of the layer blobs of the only manifest in `layout`."""
    return sum(path.stat().st_size for path in layers_of(layout))


def acceld_convert(src: Path, driver: str, keep: bool = False, memory: bool = True) -> tuple[Measure, int]:
    out = WORK / f"out-{driver}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "ACCELD_CACHE_DIR": str(WORK / "unused-cache")}
    command = [str(ACCELD), "convert", f"oci:{src}:rootfs", f"oci:{out}:conv", "-d", driver, "--no-cache"]
    result = measure(command, env, memory)
    size = blob_sizes(out)
    if not keep:
        shutil.rmtree(out)
    return result, size


def go_estargz(layers: list[Path], memory: bool = True) -> tuple[Measure, int]:
    out = WORK / "out-go"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = " && ".join(f"{ESGZ} build {layer} {out}/{n} 0 gzip" for n, layer in enumerate(layers))
    result = measure(["sh", "-c", script], {**os.environ, "GOMAXPROCS": "2"}, memory)
    size = sum(path.stat().st_size for path in out.iterdir())
    shutil.rmtree(out)
    return result, size


def gzip_zstd(layers: list[Path], memory: bool = True) -> Measure:
    script = "; ".join(f"gzip -dc {layer} | zstd -3 -T1 > /dev/null" for layer in layers)
    return measure(["sh", "-c", script], memory=memory)


def skopeo_available() -> bool:
    return (CHROOT / "usr" / "bin" / "skopeo").exists()


def skopeo_zstd_chunked(src: Path, memory: bool = True) -> tuple[Measure, int]:
    inside = CHROOT / "tmp" / "acceld-bench"
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir(parents=True)
    shutil.copytree(src, inside / "src")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    result = measure(
        [
            "chroot",
            str(CHROOT),
            "skopeo",
            "copy",
            "--quiet",
            "--dest-compress-format",
            "zstd:chunked",
            "oci:/tmp/acceld-bench/src:rootfs",
            "oci:/tmp/acceld-bench/out:conv",
        ],
        env,
        memory,
    )
    size = blob_sizes(inside / "out")
    shutil.rmtree(inside)
    return result, size


def skopeo_version() -> str:
    out = subprocess.run(["chroot", str(CHROOT), "skopeo", "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def startup(src: Path, runs: int) -> None:
    """CLI start-up: `acceld inspect` of the layout (interpreter, imports, one manifest read)."""
    for command in (["inspect", f"oci:{src}:rootfs"], ["--help"]):
        results = [measure([str(ACCELD), *command], memory=False) for _ in range(runs)]
        wall = statistics.median(m.wall for m in results)
        cpu = statistics.median(m.cpu for m in results)
        print(f"acceld {command[0]}: median {wall:.3f}s wall, {cpu:.3f}s CPU (load {os.getloadavg()[0]:.1f})")


def many_files(count: int, drivers: list[str], check: bool, check_limits: list[str]) -> None:
    """A layer of `count` small files: peak RSS and time of `acceld convert` (and `check`) per driver."""
    layout = CACHE / f"many-files-{count}"
    if not (layout / "index.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from harness.images import build_image as write_layout
        from harness.tars import write_small_files

        tar_path = write_small_files(CACHE / f"many-files-{count}.tar", count)
        write_layout(layout, [tar_path], "rootfs")
        tar_path.unlink()
    for driver in drivers:
        result, size = acceld_convert(layout, driver, keep=check)
        print(
            f"{count} files {driver}: {result.wall:.1f}s wall, {result.cpu:.1f}s CPU, "
            f"peak tree PSS {result.peak_rss / 1e6:.0f} MB, output {size / 1e6:.1f} MB",
            flush=True,
        )
        if check:
            out = WORK / f"out-{driver}"
            limits = [arg for limit in check_limits for arg in ("--limit", limit)]
            command = [str(ACCELD), "check", f"oci:{out}:conv", "--source", f"oci:{layout}:rootfs", *limits]
            result = measure(command)
            print(
                f"{count} files {driver} check: {result.wall:.1f}s wall, {result.cpu:.1f}s CPU, "
                f"peak tree PSS {result.peak_rss / 1e6:.0f} MB",
                flush=True,
            )
            shutil.rmtree(out)


MANY_LAYER_DRIVERS = {
    "estargz": ("-d", "estargz"),
    "nydus": ("-d", "nydus"),
    "zstdchunked": ("-d", "zstdchunked"),
    "soci": ("-d", "soci", "--min-layer-size", "0"),
    "nydus-zran": ("-d", "nydus", "--oci-ref"),
}


def many_layers(count: int, drivers: list[str], runs: int) -> None:
    """An image of `count` gzip layers of one tiny file each: time per layer of `acceld convert`."""
    layout = CACHE / f"many-layers-{count}"
    if not (layout / "index.json").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        from harness.images import build_image as write_layout

        tars = CACHE / f"many-layers-{count}-tars"
        tars.mkdir(parents=True, exist_ok=True)
        paths = []
        for number in range(count):
            path = tars / f"layer{number:05d}.tar"
            with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(f"f{number:05d}")
                body = b"layer %d\n" % number
                info.size, info.mtime = len(body), 1_700_000_000
                tar.addfile(info, io.BytesIO(body))
            paths.append(path)
        write_layout(layout, paths, "rootfs")
        shutil.rmtree(tars)
    env = {**os.environ, "ACCELD_CACHE_DIR": str(WORK / "unused-cache")}
    for driver in drivers:
        results = []
        for _ in range(runs):
            src = WORK / "many-layers-src"  # SOCI and Nydus zran write beside the source: a fresh copy
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(layout, src)
            command = [str(ACCELD), "convert", f"oci:{src}:rootfs", *MANY_LAYER_DRIVERS[driver], "--no-cache"]
            results.append(measure([*command, "--limit", f"max_layers={count}"], env))
        wall = statistics.median(m.wall for m in results)
        cpu = statistics.median(m.cpu for m in results)
        print(
            f"{count} layers {driver:12s} median of {runs}: {wall:6.2f}s wall ({wall / count * 1000:5.1f} ms "
            f"a layer), {cpu:6.2f}s CPU, peak tree PSS {max(m.peak_rss for m in results) / 1e6:.0f} MB "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="estargz,nydus,zstdchunked")
    parser.add_argument("--startup", action="store_true", help="also time CLI start-up")
    parser.add_argument("--many-files", type=int, help="only: one layer of this many small files")
    parser.add_argument("--check", action="store_true", help="with --many-files: also time `acceld check`")
    parser.add_argument(
        "--check-limit", action="append", default=[], help="KEY=VALUE: --limit of `acceld check`"
    )
    parser.add_argument("--many-layers", type=int, help="only: an image of this many tiny layers")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    # as an installed package has them (PYTHONDONTWRITEBYTECODE in the environment would otherwise
    # leave every acceld process compiling its changed modules again)
    compileall.compile_dir(ROOT / "src" / "acceld", quiet=1)
    if args.many_layers:
        only = args.only.split(",") if args.only != parser.get_default("only") else list(MANY_LAYER_DRIVERS)
        many_layers(args.many_layers, only, args.runs)
        return
    if args.many_files:
        many_files(args.many_files, args.only.split(","), args.check, args.check_limit)
        return
    src = build_image()
    layers = layers_of(src)
    tar_size, entries = tar_stats(layers)
    print(
        f"image: {len(layers)} gzip layers, {sum(p.stat().st_size for p in layers) / 1e6:.1f} MB gzip, "
        f"{tar_size / 1e6:.1f} MB tar, {entries} entries; load {os.getloadavg()[0]:.1f}"
    )
    if args.startup:
        startup(src, args.runs)
    drivers = args.only.split(",")
    anchors = {
        "estargz": "Go estargz.Build",
        "nydus": "gzip -dc | zstd -3 -T1",
        "zstdchunked": "skopeo zstd:chunked",
    }
    if "zstdchunked" in drivers and not skopeo_available():
        print(f"skopeo anchor unavailable: {CHROOT} not built (tests/test_zstdchunked_podman.py builds it)")
    elif "zstdchunked" in drivers:
        print(f"anchor: {skopeo_version()}")
    results: dict[str, list[tuple[Measure, int]]] = {}
    peaks: dict[str, int] = {}
    # the timed runs, then one run of each command that samples its memory (see the docstring)
    for run in [*range(args.runs), None]:
        memory = run is None
        for driver in drivers:
            mine = acceld_convert(src, driver, memory=memory)
            if driver == "estargz":
                theirs: tuple[Measure, int] | None = go_estargz(layers, memory)
            elif driver == "nydus":
                theirs = (gzip_zstd(layers, memory), 0)
            else:
                theirs = skopeo_zstd_chunked(src, memory) if skopeo_available() else None
            for name, value in ((driver, mine), (anchors[driver], theirs)):
                if value is None:
                    continue
                measured, size = value
                if memory:
                    peaks[name] = measured.peak_rss
                    print(f"memory run {name:24s} peak PSS {measured.peak_rss / 1e6:5.0f} MB", flush=True)
                    continue
                results.setdefault(name, []).append(value)
                print(
                    f"run {run + 1} {name:24s} {measured.wall:6.2f}s wall {measured.cpu:6.2f}s CPU "
                    f"output {size / 1e6:6.2f} MB (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    print("medians:")
    for driver in drivers:
        mine_runs = results[driver]
        wall = statistics.median(m.wall for m, _ in mine_runs)
        cpu = statistics.median(m.cpu for m, _ in mine_runs)
        line = f"{driver:12s} {wall:6.2f}s wall {cpu:6.2f}s CPU peak PSS {peaks[driver] / 1e6:.0f} MB"
        anchor_runs = results.get(anchors[driver])
        if anchor_runs:
            a_wall = statistics.median(m.wall for m, _ in anchor_runs)
            a_cpu = statistics.median(m.cpu for m, _ in anchor_runs)
            line += (
                f" | {anchors[driver]} {a_wall:.2f}s wall {a_cpu:.2f}s CPU "
                f"peak PSS {peaks[anchors[driver]] / 1e6:.0f} MB: "
                f"acceld/anchor wall {wall / a_wall:.2f}x, CPU {cpu / a_cpu:.2f}x"
            )
            if anchor_runs[0][1]:
                line += f", output {mine_runs[0][1]} vs {anchor_runs[0][1]} B"
        print(line)


if __name__ == "__main__":
    main()
