"""The offline test images, built once and cached under `.cache/testimages/<RECIPE>/`.

All images share one OCI layout (read-only for tests: copy it before writing). Uncompressed layer
tars are kept beside it for format tests. Building takes a few seconds (two busybox-static .debs
from the Debian mirror); later runs and parallel pytest processes reuse the cache.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from harness import tars
from harness.debs import debian_mirror, download_debs, extract_deb
from harness.images import AMD64, ARM64, LayoutImage, Platform, build_image, build_index, tar_directory

RECIPE = "v2"  # bump whenever an image recipe below changes
ROOTFS_RECIPE = "rootfs-v1"
MTIME = 1_700_000_000

# What the whiteout image's upper layer removes from, and keeps in, the merged view.
WHITEOUT_REMOVED = ("etc/app/b.conf", "usr/share/doc", "var/cache/data/old-1", "var/cache/data/old-2")
WHITEOUT_KEPT = ("bin/busybox", "bin/sh", "etc/app/a.conf", "var/cache/data/new", "usr/share/man")


@dataclass(frozen=True)
class ImageSet:
    """Every test image; tags in one layout. `tars` maps a layer name to its uncompressed tar."""

    busybox_amd64: LayoutImage  # OCI manifest, one gzip layer (static busybox + /bin/sh symlink)
    busybox_arm64: LayoutImage  # the same for arm64/v8 (a genuine arm64 binary)
    busybox_index: LayoutImage  # OCI index of the two
    docker_amd64: LayoutImage  # Docker schema2 manifest, same layer and config bytes as busybox_amd64
    docker_arm64: LayoutImage
    docker_list: LayoutImage  # Docker manifest list of the two
    whiteout: LayoutImage  # lower: busybox rootfs + /etc/app + /var/cache/data; upper: whiteouts + opaque dir
    edge: LayoutImage  # lower/upper from harness.tars (every tar entry type, whiteouts, hardlinks)
    tars: dict[str, Path]

    @property
    def layout(self) -> Path:
        return self.busybox_amd64.layout


def _busybox_tree(deb: Path, root: Path) -> Path:
    extract_deb(deb, root)
    bin_times = (root / "bin").stat()
    (root / "bin" / "sh").symlink_to("busybox")
    # Keep the layer reproducible: neither the new link nor its directory carries today's time.
    os.utime(root / "bin" / "sh", (MTIME, MTIME), follow_symlinks=False)
    os.utime(root / "bin", ns=(bin_times.st_atime_ns, bin_times.st_mtime_ns))
    return root


def _whiteout_lower(busybox_root: Path, work: Path) -> Path:
    tree = work / "whiteout-lower"
    shutil.copytree(busybox_root, tree, symlinks=True)
    (tree / "etc" / "app").mkdir(parents=True)
    (tree / "etc" / "app" / "a.conf").write_text("a = 1\n")
    (tree / "etc" / "app" / "b.conf").write_text("b = 2\n")
    (tree / "var" / "cache" / "data").mkdir(parents=True)
    (tree / "var" / "cache" / "data" / "old-1").write_text("old one\n")
    (tree / "var" / "cache" / "data" / "old-2").write_text("old two\n")
    return tar_directory(tree, work / "whiteout-lower.tar", mtime=MTIME)


def _whiteout_upper(out: Path) -> Path:
    entries: list[tuple[str, bytes | None]] = [  # None = directory
        ("etc", None),
        ("etc/app", None),
        ("etc/app/a.conf", b"a = 10\n"),
        ("etc/app/.wh.b.conf", b""),
        ("usr", None),
        ("usr/share", None),
        ("usr/share/.wh.doc", b""),
        ("var", None),
        ("var/cache", None),
        ("var/cache/data", None),
        ("var/cache/data/.wh..wh..opq", b""),
        ("var/cache/data/new", b"new\n"),
    ]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = MTIME, "root", "root"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out


def _build(target: Path) -> None:
    work = target / "work"
    layout = target / "layout"
    tar_dir = target / "tars"
    for directory in (work, tar_dir):
        directory.mkdir(parents=True)

    download_debs(["busybox-static:amd64", "busybox-static:arm64"], work)
    images: dict[str, LayoutImage] = {}
    layer_tars: dict[str, Path] = {}
    busybox_roots: dict[str, Path] = {}
    for platform in (AMD64, ARM64):
        arch = platform.architecture
        (deb,) = work.glob(f"busybox-static_*_{arch}.deb")
        busybox_roots[arch] = _busybox_tree(deb, work / f"busybox-{arch}")
        layer = layer_tars[f"busybox-{arch}"] = tar_directory(
            busybox_roots[arch], tar_dir / f"busybox-{arch}.tar"
        )
        images[f"busybox_{arch}"] = build_image(layout, [layer], f"busybox-{arch}", platform=platform)
        images[f"docker_{arch}"] = build_image(
            layout, [layer], f"docker-{arch}", platform=platform, docker=True
        )
    images["busybox_index"] = build_index(
        layout, [images["busybox_amd64"], images["busybox_arm64"]], "busybox"
    )
    images["docker_list"] = build_index(
        layout, [images["docker_amd64"], images["docker_arm64"]], "docker", docker=True
    )

    layer_tars["whiteout-lower"] = Path(shutil.move(_whiteout_lower(busybox_roots["amd64"], work), tar_dir))
    layer_tars["whiteout-upper"] = _whiteout_upper(tar_dir / "whiteout-upper.tar")
    images["whiteout"] = build_image(
        layout, [layer_tars["whiteout-lower"], layer_tars["whiteout-upper"]], "whiteout"
    )

    layer_tars["edge-lower"] = tars.write_edge_lower(tar_dir / "edge-lower.tar")
    layer_tars["edge-upper"] = tars.write_edge_upper(tar_dir / "edge-upper.tar")
    images["edge"] = build_image(layout, [layer_tars["edge-lower"], layer_tars["edge-upper"]], "edge")

    shutil.rmtree(work)
    record = {
        "images": {name: {**asdict(image), "layout": "layout"} for name, image in images.items()},
        "tars": {name: path.name for name, path in layer_tars.items()},
    }
    (target / "images.json").write_text(json.dumps(record, indent=1))


def _load(target: Path) -> ImageSet:
    record = json.loads((target / "images.json").read_text())
    loaded: dict[str, object] = {}
    for name, fields_ in record["images"].items():
        platform = Platform(**fields_["platform"]) if fields_["platform"] else None
        loaded[name] = LayoutImage(**{**fields_, "layout": target / "layout", "platform": platform})
    loaded["tars"] = {name: target / "tars" / file for name, file in record["tars"].items()}
    missing = {f.name for f in fields(ImageSet)} - set(loaded)
    if missing:
        raise RuntimeError(f"test image cache {target} lacks {sorted(missing)}: delete it to rebuild")
    return ImageSet(**loaded)  # type: ignore[arg-type]


def _cached(cache_root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`cache_root/name`, made by `build(staging_dir)` unless present; locked against parallel runs."""
    target = cache_root / name
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "images.json").exists():
            staging = cache_root / f"{name}.building-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                build(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def load_test_images(cache_root: Path) -> ImageSet:
    """Build (once, under a file lock shared by parallel runs) or load the image set in `cache_root`."""
    return _load(_cached(cache_root, RECIPE, _build))


def _build_rootfs(target: Path) -> None:
    work = target / "work"
    rootfs = work / "rootfs"
    work.mkdir(parents=True)
    (target / "tars").mkdir()
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr}"
        )
    for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
        leftover.unlink()
    lower = tar_directory(rootfs, target / "tars" / "rootfs-lower.tar")
    upper_tree = work / "upper"
    (upper_tree / "etc").mkdir(parents=True)
    (upper_tree / "etc" / "motd").write_text("acceld test rootfs\n")
    (upper_tree / "usr" / "share").mkdir(parents=True)
    (upper_tree / "usr" / "share" / ".wh.doc").write_bytes(b"")
    upper = tar_directory(upper_tree, target / "tars" / "rootfs-upper.tar", mtime=MTIME)
    image = build_image(target / "layout", [lower, upper], "rootfs")
    shutil.rmtree(work)
    (target / "images.json").write_text(json.dumps({**asdict(image), "layout": "layout"}, indent=1))


def load_rootfs_image(cache_root: Path) -> tuple[LayoutImage, dict[str, Path]]:
    """A realistic image: Debian bookworm minbase (debootstrap, ~45 s once, needs root) plus a small
    upper layer (new /etc/motd, /usr/share/doc whited out). Returns the image and its layer tars."""
    target = _cached(cache_root, ROOTFS_RECIPE, _build_rootfs)
    fields_ = json.loads((target / "images.json").read_text())
    image = LayoutImage(
        **{**fields_, "layout": target / "layout", "platform": Platform(**fields_["platform"])}
    )
    return image, {name: target / "tars" / f"{name}.tar" for name in ("rootfs-lower", "rootfs-upper")}
