"""A reader other than ours: podman 5 (containers/storage) pulls our zstd:chunked image partially.

Debian 12's podman is too old, so a Debian 13 (trixie) minbase chroot with podman and skopeo is
built once with debootstrap (a few minutes) and cached under /var/tmp. Partial pulls are enabled
without `insecure_allow_unpredictable_image_contents`, so containers/storage must authenticate
the tar-split and find it consistent with the TOC (ensureTOCMatchesTarSplit) before it uses the
layer. Needs root (chroot, bind mounts, overlay).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from harness.debs import debian_mirror
from harness.images import add_blob, add_blob_file, canonical_json, init_layout, tag_in_index
from harness.registry import RunningRegistry, run_registry
from harness.tars import write_edge_lower, write_edge_upper

from acceld.formats.driver import SourceLayer
from acceld.formats.fstree import FsTree, diff_trees, tree_from_directory, tree_from_layers
from acceld.formats.zstdchunked import ZstdChunkedDriver
from acceld.formats.zstdchunked.reader import ZstdChunkedReader

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chroot, bind mounts and overlay"),
]

CHROOT = Path("/var/tmp/acceld-test-trixie-podman")
STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
[storage.options]
pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}
"""
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p == str(root) or p.startswith(str(root) + "/")]


def _unmount_all(root: Path) -> None:
    for point in sorted(set(_mounts_below(root)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _mount(root: Path) -> None:
    if str(root) not in _mounts_below(root):
        subprocess.run(["mount", "--bind", str(root), str(root)], check=True)  # c/storage remounts "/"
    for name in ("proc", "dev", "sys"):
        subprocess.run(["mount", "--bind", f"/{name}", str(root / name)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")


def _build_chroot(root: Path) -> None:
    if shutil.which("debootstrap") is None:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"], check=True)
    partial = root.with_name(root.name + ".partial")
    _unmount_all(partial)
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", "trixie", str(partial), debian_mirror()], check=True)
    try:
        _mount(partial)
        chroot = ["chroot", str(partial)]
        subprocess.run([*chroot, "apt-get", "update"], check=True)
        subprocess.run(
            [
                *chroot,
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "podman",
                "skopeo",
                "ca-certificates",
            ],
            check=True,
        )
    finally:
        _unmount_all(partial)
    (partial / "etc" / "containers" / "storage.conf").write_text(STORAGE_CONF)
    partial.rename(root)


@pytest.fixture(scope="module")
def podman_root() -> Iterator[Path]:
    if not (CHROOT / "usr" / "bin" / "podman").exists():
        _build_chroot(CHROOT)
    _unmount_all(CHROOT)
    _mount(CHROOT)
    try:
        _run(CHROOT, "podman", "system", "reset", "--force")  # no layer may be reused from earlier runs
        yield CHROOT
    finally:
        _run(CHROOT, "podman", "system", "reset", "--force", check=False)
        _unmount_all(CHROOT)


def _run(root: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
    result = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _layout(root: Path, name: str, layers: list[dict[str, Any]], diff_ids: list[str]) -> str:
    """Write an OCI layout with these layer descriptors into the chroot; returns its path there."""
    layout = root / "tmp" / name
    init_layout(layout)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": add_blob(layout, canonical_json(config), "application/vnd.oci.image.config.v1+json"),
        "layers": layers,
    }
    tag_in_index(layout, add_blob(layout, canonical_json(manifest), manifest["mediaType"]), "latest")
    return "/" + str(layout.relative_to(root))


def _manifest(root: Path, layout: str) -> dict[str, Any]:
    path = root / layout.lstrip("/")
    index = json.loads((path / "index.json").read_bytes())
    return json.loads((path / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes())


def _blob(root: Path, layout: str, digest: str) -> Path:
    return root / layout.lstrip("/") / "blobs" / "sha256" / digest[7:]


def _chunky_tar(path: Path) -> Path:
    """Random content with zero runs below and above 1024 bytes, in a GNU-format tar."""
    rng = random.Random(11)
    content = b"".join(
        rng.randbytes(rng.randint(1, 200_000)) + bytes(rng.choice([5, 1023, 1024, 4000])) for _ in range(30)
    )
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("random/" + "r" * 120)
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
        archive.addfile(tarfile.TarInfo("random/empty"))
    return path


@dataclass(frozen=True)
class Images:
    tars: list[Path]
    ours: str  # OCI layout (path inside the chroot) with our zstd:chunked layers
    reference: str  # the same tars as zstd:chunked written by skopeo (containers/storage's writer)
    diff_ids: list[str]


@pytest.fixture(scope="module")
def images(podman_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Images:
    work = tmp_path_factory.mktemp("zstdchunked-images")
    tars = [
        write_edge_lower(work / "lower.tar", chunk_size=256 << 10),
        write_edge_upper(work / "upper.tar"),
        _chunky_tar(work / "chunky.tar"),
    ]
    for name in ("acceld-plain", "acceld-ours", "acceld-reference"):
        shutil.rmtree(podman_root / "tmp" / name, ignore_errors=True)
    diff_ids = ["sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest() for tar in tars]
    plain_layout = podman_root / "tmp" / "acceld-plain"
    init_layout(plain_layout)
    plain = [
        add_blob(plain_layout, tar.read_bytes(), "application/vnd.oci.image.layer.v1.tar") for tar in tars
    ]
    plain_ref = _layout(podman_root, "acceld-plain", plain, diff_ids)
    copy = ["skopeo", "copy", "--dest-compress-format", "zstd:chunked", "--dest-compress-level", "3"]
    _run(podman_root, *copy, f"oci:{plain_ref}:latest", "oci:/tmp/acceld-reference:latest")

    ours_layout = podman_root / "tmp" / "acceld-ours"
    init_layout(ours_layout)
    driver = ZstdChunkedDriver()
    layers = []
    for tar, diff_id in zip(tars, diff_ids, strict=True):
        blob = work / (tar.name + ".zst")
        with tar.open("rb") as source, blob.open("wb") as out:
            output = driver.convert_layer(source, out, SourceLayer(diff_id, "tar", 0, diff_id), work)
        assert output.diff_id == diff_id
        layers.append(
            {**add_blob_file(ours_layout, blob, LAYER_ZSTD), "annotations": dict(output.annotations)}
        )
    ours = _layout(podman_root, "acceld-ours", layers, diff_ids)
    return Images(tars, ours, "/tmp/acceld-reference", diff_ids)


def _metadata(blob: Path, annotations: dict[str, str]) -> tuple[bytes, bytes]:
    """Uncompressed TOC JSON and tar-split of a blob."""
    data = blob.read_bytes()
    toc_offset, toc_len = map(
        int, annotations["io.github.containers.zstd-chunked.manifest-position"].split(":")[:2]
    )
    split_offset, split_len = map(
        int, annotations["io.github.containers.zstd-chunked.tarsplit-position"].split(":")[:2]
    )
    decompress = zstandard.ZstdDecompressor().decompressobj
    return (
        decompress().decompress(data[toc_offset : toc_offset + toc_len]),
        decompress().decompress(data[split_offset : split_offset + split_len]),
    )


_OFFSETS = re.compile(rb'"(offset|endOffset)":\d+')
_TAR_SPLIT_DIGEST = re.compile(rb'"tarSplitDigest":"sha256:[0-9a-f]{64}"')


def _without_offsets(toc: bytes) -> bytes:
    return _TAR_SPLIT_DIGEST.sub(b"", _OFFSETS.sub(b"", toc))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with run_registry(tmp_path_factory.mktemp("zstdchunked-registry")) as running:
        yield running


def test_toc_and_tar_split_equal_the_reference_writers(podman_root: Path, images: Images) -> None:
    """Same tars through skopeo 1.18 (containers/storage): identical tar-split, identical TOC JSON
    apart from compressed offsets — so chunk boundaries, zeros chunks and digests agree too."""
    ours, reference = _manifest(podman_root, images.ours), _manifest(podman_root, images.reference)
    assert [layer["mediaType"] for layer in reference["layers"]] == [LAYER_ZSTD] * len(images.tars)
    for mine, theirs in zip(ours["layers"], reference["layers"], strict=True):
        our_toc, our_split = _metadata(_blob(podman_root, images.ours, mine["digest"]), mine["annotations"])
        ref_toc, ref_split = _metadata(
            _blob(podman_root, images.reference, theirs["digest"]), theirs["annotations"]
        )
        assert our_split == ref_split
        assert _without_offsets(our_toc) == _without_offsets(ref_toc)
    for theirs, tar in zip(reference["layers"], images.tars, strict=True):  # our reader on their output
        reader = ZstdChunkedReader(
            _blob(podman_root, images.reference, theirs["digest"]), theirs["annotations"]
        )
        with tar.open("rb") as source:
            reader.verify(source)
    chunky = ours["layers"][2]
    chunky_toc = json.loads(
        _metadata(_blob(podman_root, images.ours, chunky["digest"]), chunky["annotations"])[0]
    )
    assert any(e.get("chunkType") == "zeros" for e in chunky_toc["entries"])


def _pulled_tree(root: Path, registry: RunningRegistry, layout: str, name: str, digests: list[str]) -> FsTree:
    """Push the layout, partially pull it with podman from empty storage, return the mounted tree."""
    _run(root, "podman", "system", "reset", "--force")
    ref = registry.ref(f"acceld/{name}")
    _run(
        root,
        "skopeo",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout}:latest",
        f"docker://{ref}",
    )
    log = _run(root, "podman", "--log-level=debug", "pull", "--tls-verify=false", ref).stderr
    for digest in digests:
        assert f'Created zstd:chunked differ for blob \\"{digest}\\"' in log, log[-4000:]
        assert f"Retrieved partial blob {digest}" in log, log[-4000:]
    assert "level=error" not in log
    mountpoint = _run(root, "podman", "image", "mount", ref).stdout.strip()
    try:
        return tree_from_directory(root / mountpoint.lstrip("/"))
    finally:
        _run(root, "podman", "image", "unmount", ref, check=False)


def test_podman_pulls_our_image_partially_like_the_reference(
    podman_root: Path, registry: RunningRegistry, images: Images
) -> None:
    ours = _manifest(podman_root, images.ours)
    reference = _manifest(podman_root, images.reference)
    our_tree = _pulled_tree(
        podman_root, registry, images.ours, "ours", [layer["digest"] for layer in ours["layers"]]
    )
    inspected = json.loads(
        _run(podman_root, "podman", "image", "inspect", registry.ref("acceld/ours")).stdout
    )
    assert inspected[0]["RootFS"]["Layers"] == images.diff_ids
    reference_tree = _pulled_tree(
        podman_root,
        registry,
        images.reference,
        "reference",
        [layer["digest"] for layer in reference["layers"]],
    )
    # directories get the time of their creation on pull; files keep theirs
    assert diff_trees(reference_tree, our_tree, ignore_fields=("mtime",)) == []
    with ExitStack() as stack:
        expected = tree_from_layers([stack.enter_context(tar.open("rb")) for tar in images.tars])
    for path, node in expected.nodes.items():
        if node.kind == "reg":  # content, mode, owner, xattrs and mtime as in the source tars
            assert our_tree[path] == node, path
