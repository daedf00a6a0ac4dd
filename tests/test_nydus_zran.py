"""Nydus zran (OCI-ref) images judged from outside: the independent RAFS reader, EROFS tools, the kernel.

Each converted image is checked three ways: the reader in `acceld.formats.nydus.reader` (which
inflates every chunk from its zran context with the stdlib and compares every digest); a raw device
per blob built here from a *straight* decompression of the gzip layer, sliced by the CI v2 entries
and contexts parsed in this file, then `fsck.erofs --extract`; and the kernel EROFS mount.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from harness.clients import acceld
from harness.images import LayoutImage, add_blob, blob_path, canonical_json, read_blob_json, tag_in_index
from harness.registry import RunningRegistry
from harness.tars import write_edge_lower, write_edge_upper
from harness.testimages import ImageSet
from test_check import tagged
from test_convert import _bad_gzip, push_source, registry_config
from test_nydus_erofs import (
    _extraction_artifact,
    _loop_reason,
    dump_nid,
    expected_tree,
    fsck_extract,
    kernel_tree,
)

from acceld.convert.api import ConversionRequest, ConvertOptions, convert_image
from acceld.errors import AcceldError
from acceld.formats import fstree
from acceld.formats.driver import FormatError, LayerBlob, SourceLayer
from acceld.formats.nydus import NydusDriver
from acceld.formats.nydus.reader import ManifestLayer, RafsImage, check_image_layers
from acceld.service.config import ServiceConfig
from acceld.service.rules import RuleSet

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nydus"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MB = 1 << 20


# ---- gzip layers in several shapes ---------------------------------------------------------------


def gzip_layer(tar: Path, target: Path, *, level: int = 6, members: int = 1) -> Path:
    """`tar` compressed as `members` concatenated gzip members (split at arbitrary byte offsets)."""
    data = tar.read_bytes()
    cuts = sorted(random.Random(len(data)).sample(range(1, len(data)), members - 1)) if members > 1 else []
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    target.write_bytes(b"".join(gzip.compress(piece, level, mtime=0) for piece in pieces))
    return target


def source_layer(path: Path, tar: Path | None = None) -> SourceLayer:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    raw = gzip.decompress(path.read_bytes()) if tar is None else tar.read_bytes()
    return SourceLayer(digest, GZIP_LAYER, path.stat().st_size, "sha256:" + hashlib.sha256(raw).hexdigest())


def convert(driver: NydusDriver, layers: Sequence[Path], workdir: Path) -> tuple[list[LayerBlob], Path, Path]:
    """Ref blobs, the bootstrap layer and its image.boot."""
    blobs = []
    for number, path in enumerate(layers):
        layer = source_layer(path)
        blob_path = workdir / f"ref{number}.blob"
        with path.open("rb") as source, blob_path.open("wb") as out:
            output = driver.convert_layer(source, out, layer, workdir)
        digest = "sha256:" + hashlib.sha256(blob_path.read_bytes()).hexdigest()
        assert output.diff_id == digest
        blobs.append(
            LayerBlob(
                blob_path, output.media_type, digest, blob_path.stat().st_size, digest, output.annotations
            )
        )
    additions = driver.finalize(blobs, workdir)
    (bootstrap,) = additions.extra_layers
    with tarfile.open(bootstrap.path, "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot = workdir / "image.boot"
        boot.write_bytes(member.read())
    return blobs, bootstrap.path, boot


def reader_files(blobs: Sequence[LayerBlob], layers: Sequence[Path]) -> dict[str, Path]:
    files = {blob.digest.removeprefix("sha256:"): blob.path for blob in blobs}
    files.update({hashlib.sha256(p.read_bytes()).hexdigest(): p for p in layers})
    return files


# ---- independent parsing and expansion (nydus-zran.md §4, §5) -------------------------------------


def _toc(blob: bytes) -> dict[str, tuple[int, int, int, int, bytes]]:
    header = tarfile.TarInfo.frombuf(blob[-512:], "utf-8", "surrogateescape")
    assert header.name == "rafs.blob.toc"
    raw = blob[-512 - header.size : -512]
    entries = {}
    for at in range(0, len(raw), 128):
        flags, _, name, digest, offset, csize, usize = struct.unpack_from("<II16s32sQQQ", raw, at)
        entries[name.rstrip(b"\0").decode()] = (flags, offset, csize, usize, digest)
    return entries


def blob_meta(
    ref: bytes,
) -> tuple[tuple[int, ...], list[tuple[int, int, int, int, int]], list[tuple[int, ...]]]:
    """(header fields, CI entries (uoff, usize, flags, ctx, ctx offset), contexts) of a ref blob."""
    toc = _toc(ref)
    assert set(toc) == {"blob.meta", "blob.meta.header", "blob.digest", "image.boot"}
    flags, offset, csize, usize, digest = toc["blob.meta"]
    header = ref[offset + csize : offset + csize + 4096]
    fields = struct.unpack_from("<IIIIQQQQQI", header)
    assert fields[0] == 0xB10BB10B == struct.unpack_from("<I", header, 4092)[0]
    meta = ref[offset : offset + csize]
    if flags == 2:
        meta = zstandard.ZstdDecompressor().decompress(meta, max_output_size=usize)
    assert len(meta) == usize == fields[6] and hashlib.sha256(meta).digest() == digest
    count, zran_offset, zran_size, zran_count = fields[3], fields[7], fields[8], fields[9]
    assert zran_offset == 24 * count and zran_offset + zran_size == usize
    entries = []
    for i in range(count):
        uncomp, _comp, data = struct.unpack_from("<QQQ", meta, 24 * i)
        entries.append(
            (
                (uncomp & 0xFFFF_FFFF) << 12,
                ((uncomp >> 32) & 0xFF_FFFF) + 1,
                uncomp >> 56,
                data >> 32,
                data & 0xFFFF_FFFF,
            )
        )
    contexts = [struct.unpack_from("<QQQIIIBB", meta, zran_offset + 40 * i) for i in range(zran_count)]
    return fields, entries, contexts


def expand_zran(ref: Path, layer: Path, uncompressed_size: int) -> bytes:
    """The blob's raw device: every chunk, sliced from the straight decompression, at its offset."""
    _, entries, contexts = blob_meta(ref.read_bytes())
    stream = _gunzip_all(layer.read_bytes())
    device = bytearray(uncompressed_size)
    for uoff, usize, _flags, ctx, offset in entries:
        start = contexts[ctx][1] + offset
        device[uoff : uoff + usize] = stream[start : start + usize]
    return bytes(device)


def _gunzip_all(data: bytes) -> bytes:
    out = bytearray()
    while data:
        decoder = zlib.decompressobj(31)
        out += decoder.decompress(data)
        data = decoder.unused_data
    return bytes(out)


def _blob_table(boot: bytes) -> list[tuple[str, int, int, int, bytes]]:
    """(blob id, features, compressed size, uncompressed size, meta digest) per blob-table entry."""
    offset, size = struct.unpack_from("<QI", boot, 1152 + 8)
    table = []
    for at in range(offset, offset + size, 256):
        blob_id = boot[at : at + 64].rstrip(b"\0").decode()
        features, csize, usize = struct.unpack_from("<IQQ", boot, at + 84)
        table.append((blob_id, features, csize, usize, boot[at + 168 : at + 200]))
    return table


def write_devices(
    boot: Path, blobs: Sequence[LayerBlob], layers: Sequence[Path], workdir: Path
) -> list[Path]:
    refs = {blob.digest.removeprefix("sha256:"): blob.path for blob in blobs}
    gzips = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in layers}
    devices = []
    for number, (blob_id, features, _csize, usize, meta_digest) in enumerate(_blob_table(boot.read_bytes())):
        assert features & 0x1D == 0x1D and not features & 0x2  # ALIGNED | CI_V2 | ZRAN | SEPARATE
        device = workdir / f"device{number}.raw"
        device.write_bytes(expand_zran(refs[meta_digest.hex()], gzips[blob_id], usize))
        devices.append(device)
    return devices


def check_with_fsck(boot: Path, devices: Sequence[Path], tars: Sequence[Path], workdir: Path) -> None:
    target = workdir / "extracted"
    fsck_extract(boot, devices, target)
    expected = expected_tree(tars)
    differences = fstree.diff_trees(expected, fstree.tree_from_directory(target), ignore_fields=("xattrs",))
    assert [d for d in differences if not _extraction_artifact(expected, d)] == []
    for group in expected.hardlink_groups():
        assert len({dump_nid(boot, devices, path) for path in group}) == 1, group
    shutil.rmtree(target)


def assert_checklist(ref: Path, layer: Path, chunk_size: int = MB) -> None:
    """nydus-zran.md §10 items 3 and 4, and the context cut bounds of §6.3."""
    fields, entries, contexts = blob_meta(ref.read_bytes())
    gzip_size = layer.stat().st_size
    assert fields[1] & 0x1F == 0x1F  # ALIGNED | INLINED_FS_META | CI_V2 | ZRAN | SEPARATE in the ref blob
    assert fields[9] <= fields[3]  # no more contexts than chunks
    previous_end = 0
    for uoff, usize, flags, ctx, offset in entries:
        assert flags == 0x03
        assert uoff % 4096 == 0 and uoff >= previous_end
        previous_end = uoff + -(-usize // 4096) * 4096
        assert ctx < len(contexts) and offset + usize <= contexts[ctx][4]
    dict_offset = 0
    for number, (in_offset, _out, d_offset, in_len, out_len, d_size, _byte, bits) in enumerate(contexts):
        assert d_offset == dict_offset and d_size <= 32768 and bits <= 7
        dict_offset += d_size
        assert in_offset + in_len <= gzip_size and 0 < out_len <= 16 * MB
        assert number == 0 or in_offset > contexts[number - 1][0]
        # a context reaches at most one chunk past the cut thresholds (2 x chunk uncompressed) plus
        # the deflate block it starts in
        assert out_len <= 2 * chunk_size + 4 * MB


def check_image(
    driver: NydusDriver, tars: Sequence[Path], layers: Sequence[Path], workdir: Path
) -> RafsImage:
    blobs, bootstrap_layer, boot = convert(driver, layers, workdir)
    for blob, layer in zip(blobs, layers, strict=True):
        if "blob.meta" in _toc(blob.path.read_bytes()):
            assert_checklist(blob.path, layer, driver.chunk_size)
    image = RafsImage.from_bootstrap_layer(bootstrap_layer, reader_files(blobs, layers))
    image.verify()
    assert fstree.diff_trees(expected_tree(tars), image.to_fstree()) == []
    check_with_fsck(boot, write_devices(boot, blobs, layers, workdir), tars, workdir)
    return image


# ---- tests -------------------------------------------------------------------------------------


@pytest.fixture
def edge_tars(tmp_path: Path) -> list[Path]:
    return [write_edge_lower(tmp_path / "lower.tar", chunk_size=MB), write_edge_upper(tmp_path / "upper.tar")]


@pytest.mark.parametrize(("level", "members"), [(6, 1), (1, 1), (9, 7), (0, 3)])
def test_edge_image_round_trips(edge_tars: list[Path], tmp_path: Path, level: int, members: int) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz"), level=level, members=members) for t in edge_tars]
    check_image(NydusDriver(oci_ref=True), edge_tars, layers, tmp_path)


def test_temp_files_go_only_to_the_work_directory(
    edge_tars: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz")) for t in edge_tars]
    workdir = tmp_path / "work"
    workdir.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "tempdir", str(tmp_path / "no-system-temp-directory"))
        blobs, _, boot = convert(NydusDriver(oci_ref=True), layers, workdir)
    check_with_fsck(boot, write_devices(boot, blobs, layers, workdir), edge_tars, workdir)


def test_image_level_rules_and_per_layer_entries(edge_tars: list[Path], tmp_path: Path) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz")) for t in edge_tars]
    blobs, bootstrap_layer, boot = convert(NydusDriver(oci_ref=True), layers, tmp_path)
    table = _blob_table(boot.read_bytes())
    assert [entry[0] for entry in table] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in layers]
    for (_, features, csize, _usize, meta_digest), blob, layer in zip(table, blobs, layers, strict=True):
        assert features == 0x7000_003D
        assert csize == layer.stat().st_size
        assert meta_digest.hex() == blob.digest.removeprefix("sha256:")
        assert blob.annotations == {
            "containerd.io/snapshot/nydus-blob": "true",
            "containerd.io/snapshot/nydus-ref": "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest(),
        }
        assert len(blob.path.read_bytes()) < layer.stat().st_size // 4  # metadata only
    manifest_layers = [ManifestLayer(b.path, b.media_type, b.digest, b.diff_id, b.annotations) for b in blobs]
    boot_sha = hashlib.sha256(bootstrap_layer.read_bytes()).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(bootstrap_layer.read_bytes())).hexdigest()
    manifest_layers.append(
        ManifestLayer(
            bootstrap_layer,
            GZIP_LAYER,
            "sha256:" + boot_sha,
            diff_id,
            {
                "containerd.io/snapshot/nydus-bootstrap": "true",
                "containerd.io/snapshot/nydus-fs-version": "6",
            },
        )
    )
    gzips = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in layers}
    image = check_image_layers(manifest_layers, gzips)
    assert fstree.diff_trees(expected_tree(edge_tars), image.to_fstree()) == []


def test_upstream_all_entry_type_tar_and_dedup(tmp_path: Path) -> None:
    tar = FIXTURES / "all-entry-type.tar"
    layer = gzip_layer(tar, tmp_path / "all.tar.gz")
    check_image(NydusDriver(oci_ref=True), [tar], [layer], tmp_path)


def test_duplicate_content_shares_one_chunk_and_no_extra_context(tmp_path: Path) -> None:
    same = os.urandom(3 * MB // 2)
    tar = tmp_path / "dup.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        for i in range(6):
            info = tarfile.TarInfo(f"copy{i}")
            info.size = len(same)
            archive.addfile(info, io.BytesIO(same))
    layer = gzip_layer(tar, tmp_path / "dup.tar.gz")
    blobs, _, _ = convert(NydusDriver(oci_ref=True), [layer], tmp_path)
    _, entries, contexts = blob_meta(blobs[0].path.read_bytes())
    assert len(entries) == 2 and len(contexts) <= 2
    (tmp_path / "again").mkdir()
    check_image(NydusDriver(oci_ref=True), [tar], [layer], tmp_path / "again")


@pytest.mark.parametrize("chunk_size", [0x1000, 0x10000, 0x400000])
def test_chunk_sizes(edge_tars: list[Path], tmp_path: Path, chunk_size: int) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz"), members=2) for t in edge_tars]
    check_image(NydusDriver(oci_ref=True, chunk_size=chunk_size), edge_tars, layers, tmp_path)


def test_metadata_only_and_empty_layers(tmp_path: Path) -> None:
    meta = tmp_path / "meta.tar"
    with tarfile.open(meta, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in ("etc", "etc/empty", "var"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name != "etc/empty" else tarfile.REGTYPE
            archive.addfile(info)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    tars = [meta, empty]
    layers = [gzip_layer(t, t.with_suffix(".tar.gz")) for t in tars]
    blobs, bootstrap_layer, boot = convert(NydusDriver(oci_ref=True), layers, tmp_path)
    assert _blob_table(boot.read_bytes()) == []
    assert all(set(_toc(b.path.read_bytes())) == {"image.boot"} for b in blobs)
    image = RafsImage.from_bootstrap_layer(bootstrap_layer, reader_files(blobs, layers))
    image.verify()
    assert fstree.diff_trees(expected_tree(tars), image.to_fstree()) == []


@pytest.mark.skipif(_loop_reason() is not None, reason=str(_loop_reason()))
def test_kernel_mount_serves_the_source_tree(edge_tars: list[Path], tmp_path: Path) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz"), members=3) for t in edge_tars]
    blobs, _, boot = convert(NydusDriver(oci_ref=True), layers, tmp_path)
    devices = write_devices(boot, blobs, layers, tmp_path)
    assert fstree.diff_trees(expected_tree(edge_tars), kernel_tree(boot, devices, tmp_path / "mnt")) == []


# ---- refusals ----------------------------------------------------------------------------------


def test_non_gzip_layer_is_refused_naming_it(edge_tars: list[Path], tmp_path: Path) -> None:
    layer = SourceLayer("sha256:" + "1" * 64, "application/vnd.oci.image.layer.v1.tar+zstd", 10, "")
    with pytest.raises(FormatError, match=f"layer sha256:{'1' * 64} .*not gzip"):
        NydusDriver(oci_ref=True).convert_layer(io.BytesIO(b""), io.BytesIO(), layer, tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_gzip_is_a_format_error(edge_tars: list[Path], tmp_path: Path, damage: str) -> None:
    good = gzip_layer(edge_tars[0], tmp_path / "l.tar.gz").read_bytes()
    layer = source_layer(tmp_path / "l.tar.gz", edge_tars[0])
    bad = {
        "flip": good[:5000] + bytes([good[5000] ^ 0x40]) + good[5001:],
        "truncate": good[: len(good) // 2],
        "garbage": good + b"junk",
    }[damage]
    with pytest.raises(FormatError):
        NydusDriver(oci_ref=True).convert_layer(io.BytesIO(bad), io.BytesIO(), layer, tmp_path)


def test_sparse_files_and_chunk_dicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="chunk dict"):
        NydusDriver(oci_ref=True, chunk_dict=str(tmp_path / "x"))
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    (tmp_path / "src").mkdir()
    with (tmp_path / "src" / "holes").open("wb") as handle:
        handle.seek(8 * MB)
        handle.write(b"end")
    tar = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(tar), "-C", str(tmp_path / "src"), "holes"], check=True)
    layer = gzip_layer(tar, tmp_path / "sparse.tar.gz")
    with pytest.raises(FormatError):
        NydusDriver(oci_ref=True).convert_layer(layer.open("rb"), io.BytesIO(), source_layer(layer), tmp_path)


# ---- through the pipeline: layouts, registries, acceld check ----------------------------------------


@pytest.fixture
def layout(test_images: ImageSet, tmp_path: Path) -> Path:
    copy = tmp_path / "layout"
    shutil.copytree(test_images.layout, copy)
    return copy


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    return read_blob_json(layout, tagged(layout, tag))


@pytest.mark.parametrize("tag", ["whiteout", "busybox", "docker-amd64"])
def test_cli_converts_in_place_and_check_passes(layout: Path, tmp_path: Path, tag: str) -> None:
    converted = acceld("convert", f"oci:{layout}:{tag}", "-d", "nydus", "--oci-ref", cache=tmp_path / "cache")
    assert converted.returncode == 0, converted.stderr[-2000:]
    checked = acceld("check", f"oci:{layout}:{tag}-nydus-oci-ref", cache=tmp_path / "cache")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    assert "OK" in checked.stdout
    root = _manifest(layout, f"{tag}-nydus-oci-ref")
    sources = _manifest(layout, tag)
    pairs = (
        [(m, s) for m, s in zip(root["manifests"], sources["manifests"], strict=True)]
        if "manifests" in root
        else [(None, None)]
    )
    for entry, source_entry in pairs:
        manifest = root if entry is None else read_blob_json(layout, entry["digest"])
        source = sources if source_entry is None else read_blob_json(layout, source_entry["digest"])
        *refs, bootstrap = manifest["layers"]
        assert [ref["annotations"]["containerd.io/snapshot/nydus-ref"] for ref in refs] == [
            layer["digest"] for layer in source["layers"]
        ]
        assert all(ref["mediaType"] == "application/vnd.oci.image.layer.nydus.blob.v1" for ref in refs)
        assert bootstrap["annotations"]["containerd.io/snapshot/nydus-bootstrap"] == "true"
        assert manifest["subject"]["digest"] == (source_entry or {"digest": tagged(layout, tag)})["digest"]
        assert sum(ref["size"] for ref in refs) < sum(layer["size"] for layer in source["layers"]) // 4


def test_target_outside_the_source_repository_is_refused(layout: Path, tmp_path: Path) -> None:
    result = acceld(
        "convert",
        f"oci:{layout}:whiteout",
        f"oci:{tmp_path / 'other'}:x",
        "-d",
        "nydus",
        "--oci-ref",
        cache=tmp_path / "cache",
    )
    assert result.returncode != 0 and "source repository" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_non_gzip_source_is_refused_naming_the_layer(layout: Path, tmp_path: Path) -> None:
    zstd = acceld("convert", f"oci:{layout}:busybox-amd64", "-d", "zstdchunked", cache=tmp_path / "cache")
    assert zstd.returncode == 0, zstd.stderr
    layer = _manifest(layout, "busybox-amd64-zstdchunked")["layers"][0]["digest"]
    result = acceld(
        "convert",
        f"oci:{layout}:busybox-amd64-zstdchunked",
        "-d",
        "nydus",
        "--oci-ref",
        cache=tmp_path / "cache",
    )
    assert result.returncode != 0
    assert f"source layer {layer}" in result.stderr and "not gzip" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "busybox-amd64-zstdchunked-nydus-oci-ref" not in (layout / "index.json").read_text()


async def test_registry_round_trip_and_corrupt_layer(
    layout: Path, registry_plain: RunningRegistry, tmp_path: Path
) -> None:
    push_source(layout, "whiteout", registry_plain, "zran/app:v1")
    options = ConvertOptions(cache_dir=tmp_path / "cache")
    config = registry_config(registry_plain)
    request = ConversionRequest(
        source=f"{registry_plain.host}/zran/app:v1", driver="nydus", options={"oci_ref": True}
    )
    result = await convert_image(request, config, options=options)
    assert result.target == f"{registry_plain.host}/zran/app:v1-nydus-oci-ref"
    assert result.target_size < result.source_size // 4  # metadata only: the gzip layers stay
    checked = acceld("check", result.target, "--plain-http", cache=tmp_path / "cache")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    # cached layers: the same conversion again converts nothing
    again = await convert_image(request, config, options=options)
    assert (again.target_digest, again.layers_converted) == (result.target_digest, 0)

    _bad_gzip(layout)
    push_source(layout, "broken", registry_plain, "zran/broken:v1")
    with pytest.raises(AcceldError) as failure:
        await convert_image(
            ConversionRequest(
                source=f"{registry_plain.host}/zran/broken:v1", driver="nydus", options={"oci_ref": True}
            ),
            config,
            options=options,
        )
    assert "\n" not in str(failure.value) and "sha256:" in str(failure.value)
    tags = httpx.get(f"{registry_plain.url}/v2/zran/broken/tags/list").json()["tags"]
    assert tags == ["v1"]


# ---- the debootstrap rootfs image (slow) ------------------------------------------------------------

RootfsImage = tuple[LayoutImage, dict[str, Path]]


@pytest.fixture(scope="module")
def rootfs_zran(
    rootfs_image: RootfsImage, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The rootfs converted in place by the CLI: (layout copy, zran manifest, source manifest)."""
    layout = tmp_path_factory.mktemp("rootfs-zran") / "layout"
    shutil.copytree(rootfs_image[0].layout, layout)
    tag = rootfs_image[0].tag
    result = acceld(
        "convert", f"oci:{layout}:{tag}", "-d", "nydus", "--oci-ref", "--no-cache", cache=layout.parent / "c"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return layout, _manifest(layout, tag + "-nydus-oci-ref"), _manifest(layout, tag)


def _rootfs_parts(
    layout: Path, manifest: dict[str, Any], workdir: Path
) -> tuple[Path, list[LayerBlob], list[Path]]:
    *refs, bootstrap = manifest["layers"]
    boot = workdir / "image.boot"
    with tarfile.open(blob_path(layout, bootstrap["digest"]), "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot.write_bytes(member.read())
    blobs = [
        LayerBlob(
            blob_path(layout, r["digest"]),
            r["mediaType"],
            r["digest"],
            r["size"],
            r["digest"],
            r["annotations"],
        )
        for r in refs
    ]
    gzips = [blob_path(layout, r["annotations"]["containerd.io/snapshot/nydus-ref"]) for r in refs]
    return boot, blobs, gzips


@pytest.mark.slow
def test_rootfs_checklist_and_acceld_check(
    rootfs_zran: tuple[Path, dict[str, Any], dict[str, Any]], rootfs_image: RootfsImage, tmp_path: Path
) -> None:
    layout, manifest, source = rootfs_zran
    _, blobs, gzips = _rootfs_parts(layout, manifest, tmp_path)
    for blob, layer in zip(blobs, gzips, strict=True):
        if "blob.meta" in _toc(blob.path.read_bytes()):
            assert_checklist(blob.path, layer)
    # the independent reader (every context re-inflated and compared with the layer, every chunk
    # digest) and the tree comparison with the source, as `acceld check` runs them
    checked = acceld("check", f"oci:{layout}:{rootfs_image[0].tag}-nydus-oci-ref", cache=tmp_path / "c")
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    added = sum(layer["size"] for layer in manifest["layers"])
    assert added < sum(layer["size"] for layer in source["layers"]) // 5


@pytest.mark.slow
def test_rootfs_fsck_and_kernel_mount(
    rootfs_zran: tuple[Path, dict[str, Any], dict[str, Any]], rootfs_image: RootfsImage, tmp_path: Path
) -> None:
    layout, manifest, _ = rootfs_zran
    boot, blobs, gzips = _rootfs_parts(layout, manifest, tmp_path)
    tars = [rootfs_image[1][name] for name in ("rootfs-lower", "rootfs-upper")]
    devices = write_devices(boot, blobs, gzips, tmp_path)
    check_with_fsck(boot, devices, tars, tmp_path)
    if _loop_reason() is None:
        assert fstree.diff_trees(expected_tree(tars), kernel_tree(boot, devices, tmp_path / "mnt")) == []


def test_rule_option_oci_ref_selects_the_zran_suffix(tmp_path: Path) -> None:
    config = ServiceConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "rules": [
                {"name": "r", "drivers": [{"name": "nydus"}, {"name": "nydus", "options": {"oci_ref": True}}]}
            ],
        }
    )
    (rule,) = RuleSet(config.rules).rules
    native, zran = rule.conversions
    assert (native.tag_suffix, zran.tag_suffix) == ("-nydus", "-nydus-oci-ref")
    assert native.options_key != zran.options_key
    assert RuleSet(config.rules).is_converted_tag("v1-nydus-oci-ref")


def test_every_sampled_ref_blob_byte_flip_is_a_format_error(edge_tars: list[Path], tmp_path: Path) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz"), members=2) for t in edge_tars]
    blobs, bootstrap_layer, _ = convert(NydusDriver(oci_ref=True), layers, tmp_path)
    ref = blobs[0].path
    good = ref.read_bytes()
    offsets = sorted(set(random.Random(7).sample(range(len(good)), 120)) | {0, len(good) - 1})
    for offset in offsets:
        ref.write_bytes(good[:offset] + bytes([good[offset] ^ 0x10]) + good[offset + 1 :])
        with pytest.raises(FormatError):
            RafsImage.from_bootstrap_layer(bootstrap_layer, reader_files(blobs, layers)).verify()
    ref.write_bytes(good)
    RafsImage.from_bootstrap_layer(bootstrap_layer, reader_files(blobs, layers)).verify()


def test_a_flipped_gzip_layer_byte_is_a_format_error(edge_tars: list[Path], tmp_path: Path) -> None:
    layers = [gzip_layer(t, t.with_suffix(".tar.gz")) for t in edge_tars]
    blobs, bootstrap_layer, _ = convert(NydusDriver(oci_ref=True), layers, tmp_path)
    files = reader_files(blobs, layers)
    good = layers[0].read_bytes()
    for offset in random.Random(3).sample(range(len(good)), 12):
        layers[0].write_bytes(good[:offset] + bytes([good[offset] ^ 0x01]) + good[offset + 1 :])
        with pytest.raises(FormatError):
            RafsImage.from_bootstrap_layer(bootstrap_layer, files).verify()


def test_check_catches_ref_blobs_paired_with_the_wrong_gzip_layer(layout: Path, tmp_path: Path) -> None:
    converted = acceld(
        "convert", f"oci:{layout}:whiteout", "-d", "nydus", "--oci-ref", cache=tmp_path / "cache"
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    manifest = _manifest(layout, "whiteout-nydus-oci-ref")
    first, second = manifest["layers"][0]["annotations"], manifest["layers"][1]["annotations"]
    key = "containerd.io/snapshot/nydus-ref"
    first[key], second[key] = second[key], first[key]
    tag_in_index(layout, add_blob(layout, canonical_json(manifest), manifest["mediaType"]), "tampered")
    result = acceld("check", f"oci:{layout}:tampered", cache=tmp_path / "cache")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "ref blob" in result.stdout
