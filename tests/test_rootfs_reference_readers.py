"""The real Debian rootfs image converted by `acceld convert`, read back by each format's reference reader:
the Go `esgz verify`, fsck.erofs and the kernel erofs mount, and the `zstd` CLI."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from harness.clients import acceld
from harness.images import LayoutImage, blob_path, read_blob_json
from test_check import SUFFIXES, tagged
from test_nydus_erofs import _loop_reason, check_with_fsck, expected_tree, kernel_tree, write_devices

from acceld.formats import fstree

pytestmark = pytest.mark.slow

TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION = "io.github.containers.zstd-chunked.manifest-position"
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ROOTFS_TARS = ("rootfs-lower", "rootfs-upper")

RootfsImage = tuple[LayoutImage, dict[str, Path]]


@pytest.fixture(scope="module")
def layout(rootfs_image: RootfsImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the rootfs layout that receives every driver's output."""
    copy = tmp_path_factory.mktemp("rootfs-readers") / "layout"
    shutil.copytree(rootfs_image[0].layout, copy)
    return copy


def _convert(layout: Path, image: LayoutImage, driver: str, cache: Path) -> dict[str, Any]:
    """Convert the rootfs once with the real CLI and return the converted manifest."""
    result = acceld("convert", f"oci:{layout}:{image.tag}", "-d", driver, "--no-cache", cache=cache)
    assert result.returncode == 0, result.stderr[-2000:]
    return read_blob_json(layout, tagged(layout, image.tag + SUFFIXES[driver]))


@pytest.fixture(scope="module")
def source_diff_ids(layout: Path, rootfs_image: RootfsImage) -> list[str]:
    manifest = read_blob_json(layout, tagged(layout, rootfs_image[0].tag))
    diff_ids: list[str] = read_blob_json(layout, manifest["config"]["digest"])["rootfs"]["diff_ids"]
    return diff_ids


@pytest.fixture(scope="module")
def estargz_manifest(
    layout: Path, rootfs_image: RootfsImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return _convert(layout, rootfs_image[0], "estargz", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def nydus_manifest(
    layout: Path, rootfs_image: RootfsImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return _convert(layout, rootfs_image[0], "nydus", tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def zstdchunked_manifest(
    layout: Path, rootfs_image: RootfsImage, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    return _convert(layout, rootfs_image[0], "zstdchunked", tmp_path_factory.mktemp("cache"))


def test_estargz_layers_pass_the_go_verifier(
    layout: Path, estargz_manifest: dict[str, Any], source_diff_ids: list[str], esgz: Path
) -> None:
    layers = estargz_manifest["layers"]
    assert len(layers) == len(source_diff_ids)
    for layer in layers:
        verified = subprocess.run(
            [str(esgz), "verify", str(blob_path(layout, layer["digest"])), layer["annotations"][TOC_DIGEST]],
            capture_output=True,
            text=True,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]


def _nydus_parts(layout: Path, manifest: dict[str, Any], workdir: Path) -> tuple[Path, dict[str, Path]]:
    """image.boot extracted from the bootstrap layer (the last one) and the blob files by blob id."""
    *blobs, bootstrap = manifest["layers"]
    boot = workdir / "image.boot"
    with tarfile.open(blob_path(layout, bootstrap["digest"]), "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot.write_bytes(member.read())
    blob_ids = {
        layer["digest"].removeprefix("sha256:"): blob_path(layout, layer["digest"]) for layer in blobs
    }
    return boot, blob_ids


@pytest.fixture(scope="module")
def nydus_parts(
    layout: Path, nydus_manifest: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    return _nydus_parts(layout, nydus_manifest, tmp_path_factory.mktemp("nydus"))


def test_nydus_bootstrap_passes_fsck_and_extracts_the_source_tree(
    nydus_parts: tuple[Path, dict[str, Path]], rootfs_image: RootfsImage, tmp_path: Path
) -> None:
    boot, blobs = nydus_parts
    check_with_fsck(boot, blobs, [rootfs_image[1][name] for name in ROOTFS_TARS], tmp_path)


@pytest.mark.skipif(_loop_reason() is not None, reason=str(_loop_reason()))
def test_nydus_kernel_mount_serves_the_source_tree(
    nydus_parts: tuple[Path, dict[str, Path]], rootfs_image: RootfsImage, tmp_path: Path
) -> None:
    boot, blobs = nydus_parts
    devices = write_devices(boot.read_bytes(), blobs, tmp_path)
    expected = expected_tree([rootfs_image[1][name] for name in ROOTFS_TARS])
    assert fstree.diff_trees(expected, kernel_tree(boot, devices, tmp_path / "mnt")) == []


def _sha256_of_command(command: list[str]) -> str:
    digest = hashlib.sha256()
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        while chunk := process.stdout.read(1 << 20):
            digest.update(chunk)
        assert process.wait() == 0, command
    return "sha256:" + digest.hexdigest()


def test_zstdchunked_layers_decompress_with_the_zstd_cli_to_the_source_tars(
    layout: Path, zstdchunked_manifest: dict[str, Any], source_diff_ids: list[str]
) -> None:
    blobs = [blob_path(layout, layer["digest"]) for layer in zstdchunked_manifest["layers"]]
    assert [_sha256_of_command(["zstd", "-dc", str(blob)]) for blob in blobs] == source_diff_ids


def test_zstdchunked_manifest_checksum_covers_the_toc_frame(
    layout: Path, zstdchunked_manifest: dict[str, Any]
) -> None:
    for layer in zstdchunked_manifest["layers"]:
        offset, length, _, _ = map(int, layer["annotations"][POSITION].split(":"))
        with blob_path(layout, layer["digest"]).open("rb") as blob:
            blob.seek(offset - 8)
            header = blob.read(8)
            payload = blob.read(length)
        assert header == SKIPPABLE_MAGIC + struct.pack("<I", length), "TOC is not a skippable frame's payload"
        assert len(payload) == length
        assert layer["annotations"][CHECKSUM] == "sha256:" + hashlib.sha256(payload).hexdigest()
