"""Byte-level rules of the Nydus writer output (spec §3 to §6), parsed here independently of the writer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import blake3
import pytest
import zstandard
from harness.tars import write_edge_lower, write_edge_upper

from acceld.formats.driver import FormatError, LayerBlob, SourceLayer
from acceld.formats.nydus import NydusDriver

SOURCE = SourceLayer("sha256:" + "0" * 64, "application/vnd.oci.image.layer.v1.tar", 0, "sha256:" + "0" * 64)


def _tar(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _convert(driver: NydusDriver, tar: bytes, tmp_path: Path, name: str = "layer") -> LayerBlob:
    path = tmp_path / f"{name}.blob"
    with path.open("wb") as out:
        output = driver.convert_layer(io.BytesIO(tar), out, SOURCE, tmp_path)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return LayerBlob(path, output.media_type, digest, path.stat().st_size, output.diff_id, output.annotations)


def _parts(blob: bytes) -> list[tuple[str, int, int]]:
    """Walk the "data | header" stream from its tail: (name, data offset, size) in stream order."""
    parts = []
    end = len(blob)
    while end > 0:
        header = tarfile.TarInfo.frombuf(blob[end - 512 : end], "utf-8", "surrogateescape")  # checks chksum
        assert blob[end - 512 + 257 : end - 512 + 265] == b"ustar  \0"
        start = end - 512 - header.size
        parts.append((header.name, start, header.size))
        end = start
    assert end == 0
    return parts[::-1]


def _toc(blob: bytes) -> list[tuple[int, str, bytes, int, int, int, bytes]]:
    header = tarfile.TarInfo.frombuf(blob[-512:], "utf-8", "surrogateescape")
    raw = blob[-512 - header.size : -512]
    rows = []
    for at in range(0, len(raw), 128):
        flags, reserved, name, digest, offset, csize, usize = struct.unpack_from("<II16s32sQQQ", raw, at)
        assert reserved == 0
        rows.append(
            (flags, name.rstrip(b"\0").decode(), digest, offset, csize, usize, raw[at + 80 : at + 128])
        )
    return rows


def test_blob_stream_parts_toc_and_meta(tmp_path: Path) -> None:
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(60000))  # ~1.9 MiB
    random = os.urandom(300_000)
    tar = _tar(
        {"a/text": text, "a/copy-of-text": text, "a/random": random, "a/empty": b"", "zeros": bytes(8192)}
    )
    layer = _convert(NydusDriver(chunk_size=0x100000), tar, tmp_path)
    blob = layer.path.read_bytes()
    assert layer.diff_id == layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.media_type == "application/vnd.oci.image.layer.nydus.blob.v1"
    assert layer.annotations == {"containerd.io/snapshot/nydus-blob": "true"}

    parts = _parts(blob)
    assert [name for name, _, _ in parts] == [
        "image.blob",
        "blob.meta",
        "blob.digest",
        "image.boot",
        "rafs.blob.toc",
    ]
    toc = _toc(blob)
    assert [row[1] for row in toc] == [
        "image.blob",
        "blob.meta",
        "blob.meta.header",
        "blob.digest",
        "image.boot",
    ]
    assert all(row[6] == bytes(48) for row in toc)
    by_name = {row[1]: row for row in toc}
    _, chunk_start, chunk_bytes = parts[0]
    assert by_name["image.blob"][:2] == (0x1, "image.blob")
    assert by_name["image.blob"][2] == hashlib.sha256(blob[: chunk_bytes + 512]).digest()
    assert by_name["image.blob"][3:5] == (0, chunk_bytes)

    # blob.meta: CI (zstd only when that is smaller) immediately followed by the 4096-byte header
    flags, _, ci_digest, ci_offset, ci_csize, ci_usize, _ = by_name["blob.meta"]
    assert parts[1][1] == ci_offset and parts[1][2] == ci_csize + 4096
    ci = blob[ci_offset : ci_offset + ci_csize]
    if flags == 0x2:
        ci = zstandard.ZstdDecompressor().decompress(ci, max_output_size=ci_usize)
    else:
        assert flags == 0x1 and ci_csize == ci_usize
    assert hashlib.sha256(ci).digest() == ci_digest
    header = blob[ci_offset + ci_csize : ci_offset + ci_csize + 4096]
    assert by_name["blob.meta.header"][2:6] == (
        hashlib.sha256(header).digest(),
        ci_offset + ci_csize,
        4096,
        4096,
    )
    magic, features, ci_comp, count, h_off, h_csize, h_usize = struct.unpack_from("<IIIIQQQ", header)
    assert (magic, struct.unpack_from("<I", header, 4092)[0]) == (0xB10BB10B, 0xB10BB10B)
    assert (features, ci_comp, h_off, h_csize, h_usize) == (
        0x70000023,
        3 if flags == 2 else 0,
        ci_offset,
        ci_csize,
        ci_usize,
    )
    assert header[60:4092] == bytes(4032)
    # text: 2 chunks, copy deduplicated, random: 1 raw chunk, zeros: 1 chunk, empty: none
    assert count == 4 and ci_usize == 16 * count

    digests_offset = by_name["blob.digest"][3]
    assert by_name["blob.digest"][4:6] == (32 * count, 32 * count)
    previous_end = 0
    chunks = []
    for index in range(count):
        uncomp, comp = struct.unpack_from("<QQ", ci, 16 * index)
        assert uncomp & 0xFF == 0
        uoff = uncomp & 0xFFF_FFFF_F000
        usize = ((uncomp >> 44) | ((uncomp >> 8) & 0xF) << 20) + 1
        coff = comp & 0xFF_FFFF_FFFF
        csize = ((comp >> 44) | ((comp >> 40) & 0xF) << 20) + 1
        assert uoff == previous_end  # sorted, 4K aligned, packed
        previous_end = uoff + (usize + 4095) // 4096 * 4096
        assert chunk_start <= coff and coff + csize <= chunk_start + chunk_bytes
        data = blob[coff : coff + csize]
        if csize != usize:
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=usize)
        assert (
            blake3.blake3(data).digest()
            == blob[digests_offset + 32 * index : digests_offset + 32 * (index + 1)]
        )
        chunks.append((data, csize))
    assert by_name["image.blob"][5] == previous_end
    assert any(data == random and csize == len(random) for data, csize in chunks)  # stored raw
    assert sum(data == text[:0x100000] for data, _ in chunks) == 1

    boot_flags, _, boot_digest, boot_offset, boot_csize, boot_usize, _ = by_name["image.boot"]
    assert boot_flags == 0x2 and parts[3][1:] == (boot_offset, boot_csize)
    boot = zstandard.ZstdDecompressor().decompress(blob[boot_offset : boot_offset + boot_csize], boot_usize)
    assert hashlib.sha256(boot).digest() == boot_digest and len(boot) % 4096 == 0
    flags = struct.unpack_from("<Q", boot, 1152)[0]
    assert flags == 0x01000194
    blob_table = struct.unpack_from("<Q", boot, 1152 + 8)[0]
    assert boot[blob_table : blob_table + 64] == b"x" * 64
    features, csize_field = (
        struct.unpack_from("<I", boot, blob_table + 84)[0],
        struct.unpack_from("<Q", boot, blob_table + 88)[0],
    )
    assert features == 0x70000023 and csize_field == boot_offset


def test_metadata_only_layer_has_only_a_bootstrap(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
        archive.addfile(tarfile.TarInfo("dir/empty"), io.BytesIO())
    blob = _convert(NydusDriver(), buffer.getvalue(), tmp_path).path.read_bytes()
    assert [name for name, _, _ in _parts(blob)] == ["image.boot", "rafs.blob.toc"]
    assert [row[1] for row in _toc(blob)] == ["image.boot"]


def test_lz4_and_uncompressed_blobs_record_their_compressor(tmp_path: Path) -> None:
    tar = _tar({"f": b"abc" * 100_000})
    lz4_blob = _convert(NydusDriver(compressor="lz4_block"), tar, tmp_path, "lz4").path.read_bytes()
    assert {row[1]: row[0] for row in _toc(lz4_blob)}["blob.meta"] in (0x1, 0x4)
    plain = _convert(
        NydusDriver(compressor="none", digester="sha256"), tar, tmp_path, "none"
    ).path.read_bytes()
    toc = {row[1]: row for row in _toc(plain)}
    assert toc["blob.meta"][0] == 0x1 and toc["image.blob"][4] == 300_000


def test_bootstrap_layer_and_merged_bootstrap(tmp_path: Path) -> None:
    lower = write_edge_lower(tmp_path / "lower.tar", chunk_size=1 << 20)
    upper = write_edge_upper(tmp_path / "upper.tar")
    driver = NydusDriver()
    layers = [_convert(driver, path.read_bytes(), tmp_path, path.stem) for path in (lower, upper)]
    additions = driver.finalize(layers, tmp_path)
    assert list(additions.history) == [{"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}]
    assert additions.manifest_annotations["containerd.io/snapshot/nydus-fs-version"] == "6"
    (bootstrap_layer,) = additions.extra_layers
    assert bootstrap_layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert bootstrap_layer.annotations == {
        "containerd.io/snapshot/nydus-fs-version": "6",
        "containerd.io/snapshot/nydus-bootstrap": "true",
    }
    compressed = bootstrap_layer.path.read_bytes()
    assert bootstrap_layer.digest == "sha256:" + hashlib.sha256(compressed).hexdigest()
    assert bootstrap_layer.size == len(compressed)
    tar_bytes = gzip.decompress(compressed)
    assert bootstrap_layer.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    hexes = [layer.digest.removeprefix("sha256:") for layer in layers]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [
            "image",
            "image/image.boot",
            *(f"image/{h}.blob.meta" for h in hexes),
        ]
        assert members[0].isdir() and members[0].mode == 0o755
        assert all(m.mode == 0o444 for m in members[1:])
        boot = archive.extractfile("image/image.boot").read()  # type: ignore[union-attr]
        metas = [archive.extractfile(m).read() for m in members[2:]]  # type: ignore[union-attr]

    assert len(boot) % 4096 == 0
    magic, checksum, compat, blkszbits, extslots, root_nid, inos = struct.unpack_from("<IIIBBHQ", boot, 1024)
    assert (magic, checksum, compat, blkszbits, extslots, root_nid) == (0xE0F5E1E2, 0, 0x40000000, 12, 0, 128)
    assert inos > 40
    blocks, meta_blkaddr, xattr_blkaddr = struct.unpack_from("<III", boot, 1024 + 36)
    incompat, s_u, extra_devices, slotoff = struct.unpack_from("<IHHH", boot, 1024 + 80)
    assert (xattr_blkaddr, incompat, s_u, extra_devices, slotoff) == (0, 0xC, 0, 2, 11)
    flags, bt_off, bt_size, chunk_size, ct_off, ct_size, pf_off, pf_size = struct.unpack_from(
        "<QQIIQQQI", boot, 1152
    )
    assert flags == 0x010001B4 and chunk_size == 0x100000
    assert bt_off % 4096 == 0 and bt_size == 512 and ct_off % 4096 == 0 and ct_size % 80 == 0
    assert struct.unpack_from(f"<{pf_size // 4}I", boot, pf_off) == (128,)
    assert meta_blkaddr * 4096 >= pf_off + pf_size
    position, total_blocks = len(boot), 0
    for index, layer_hex in enumerate(hexes):
        slot = 1408 + 128 * index
        entry = bt_off + 256 * index
        assert boot[slot : slot + 64].decode() == layer_hex == boot[entry : entry + 64].decode()
        dev_blocks, mapped = struct.unpack_from("<II", boot, slot + 64)
        (blob_index, blob_chunk_size, chunk_count, comp, digest_algo, features) = struct.unpack_from(
            "<IIIIII", boot, entry + 64
        )
        uncompressed_size = struct.unpack_from("<Q", boot, entry + 96)[0]
        ci_offset, ci_csize, ci_usize = struct.unpack_from("<QQQ", boot, entry + 112)
        assert (blob_index, blob_chunk_size, comp, digest_algo, features) == (
            index,
            0x100000,
            3,
            0,
            0x70000021,
        )
        assert dev_blocks == uncompressed_size // 4096 and uncompressed_size % 4096 == 0
        assert mapped * 4096 == (position + 0x7FFFF) // 0x80000 * 0x80000
        position = (mapped + dev_blocks) * 4096
        total_blocks += dev_blocks
        # .blob.meta = CI padded to 4 KiB + the header copied from the blob
        meta = metas[index]
        assert len(meta) == (ci_usize + 4095) // 4096 * 4096 + 4096 and ci_usize == 16 * chunk_count
        blob = layers[index].path.read_bytes()
        assert meta[-4096:] == blob[ci_offset + ci_csize : ci_offset + ci_csize + 4096]
    assert blocks == total_blocks
    rows = [boot[at : at + 80] for at in range(ct_off, ct_off + ct_size, 80)]
    keys = [(row[:32], struct.unpack_from("<I", row, 32)[0]) for row in rows]
    assert keys == sorted(set(keys))


def test_driver_contract(tmp_path: Path) -> None:
    driver = NydusDriver(compressor="lz4_block", chunk_size=0x10000, prefetch_patterns=("/etc",))
    assert (driver.name, driver.tag_suffix) == ("nydus", "-nydus")
    assert pickle.loads(pickle.dumps(driver)) == driver
    assert driver.options_key() != NydusDriver().options_key()
    assert NydusDriver().options_key() == NydusDriver().options_key()
    nydus_blob = SourceLayer("sha256:" + "1" * 64, "application/vnd.oci.image.layer.nydus.blob.v1", 1, "")
    bootstrap = SourceLayer(
        "sha256:" + "2" * 64,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        1,
        "",
        {"containerd.io/snapshot/nydus-bootstrap": "true"},
    )
    assert driver.is_converted(nydus_blob) and driver.is_converted(bootstrap)
    assert not driver.is_converted(SOURCE)


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_size": 3000},
        {"chunk_size": 0x2000000},
        {"compressor": "gzip"},
        {"digester": "md5"},
        {"prefetch_patterns": ("relative",)},
    ],
)
def test_bad_options_are_format_errors(options: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        NydusDriver(**options)  # type: ignore[arg-type]


def test_unknown_xattr_namespace_and_dangling_hardlink_are_rejected(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"SCHILY.xattr.nonamespace": "x"}
        archive.addfile(info, io.BytesIO())
    with pytest.raises(FormatError, match="xattr"):
        _convert(NydusDriver(), buffer.getvalue(), tmp_path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.LNKTYPE, "missing"
        archive.addfile(link)
    with pytest.raises(FormatError, match="hardlink"):
        _convert(NydusDriver(), buffer.getvalue(), tmp_path)


@pytest.mark.parametrize("field", [{"uid": 1 << 40}, {"gid": 1 << 33}, {"mtime": -5}])
def test_ids_and_times_outside_rafs_range_are_rejected(field: dict[str, int], tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("f")
        for name, value in field.items():
            setattr(info, name, value)
        archive.addfile(info, io.BytesIO())
    with pytest.raises(FormatError, match="out of the range"):
        _convert(NydusDriver(), buffer.getvalue(), tmp_path)


def test_name_component_longer_than_255_bytes_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="255"):
        _convert(NydusDriver(), _tar({"d/" + "n" * 256: b"x"}), tmp_path)
    _convert(NydusDriver(), _tar({"d/" + "n" * 255: b"x"}), tmp_path)


def test_missing_chunk_dict_is_a_format_error(tmp_path: Path) -> None:
    driver = NydusDriver(chunk_dict=str(tmp_path / "absent"))
    with pytest.raises(FormatError, match="chunk dict"):
        driver.options_key()
    with pytest.raises(FormatError, match="chunk dict"):
        _convert(driver, _tar({"f": b"x"}), tmp_path)


def test_chunk_dict_that_is_no_bootstrap_is_a_format_error(tmp_path: Path) -> None:
    garbage = tmp_path / "dict"
    garbage.write_bytes(b"garbage" * 1000)
    with pytest.raises(FormatError, match="neither a RAFS bootstrap") as caught:
        _convert(NydusDriver(chunk_dict=str(garbage)), _tar({"f": b"x"}), tmp_path)
    assert "\n" not in str(caught.value)
