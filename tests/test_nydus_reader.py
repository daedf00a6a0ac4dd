"""The independent RAFS v6 / Nydus reader on the real upstream fixtures (../shared/fixtures/nydus).

Trees and contents are cross-checked with `fsck.erofs --extract` (erofs-utils from Debian) on the
blob expanded into a raw EROFS device; corruption tests flip single bytes in copies of the fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.fstree import FsTree, diff_trees, tree_from_directory
from acceld.formats.nydus.reader import (
    BlobError,
    BootstrapError,
    RafsImage,
    UnsupportedNydusError,
    open_bootstrap_layer,
    verify_blob,
)
from acceld.formats.nydus.reader_blob import NydusBlob, expand_blob, parse_blob_meta_file
from acceld.formats.nydus.reader_bootstrap import parse_bootstrap
from acceld.formats.nydus.reader_common import COMPRESSOR_ZSTD, crc32c, decompress
from acceld.formats.nydus.reader_zran import check_zran_chunk, parse_zran_tables

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nydus"
BOOT_V6 = FIXTURES / "rafs-v6-2.2.boot"
BLOB_OLD = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
BLOB_INLINE = "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca"
ZRAN_META = "233c72f2b6b698c07021c4da367cfe2dff4f049efbaa885ca0ff760ea297865a.blob.meta"
REAL_LAYER = FIXTURES / "v6-bootstrap-chunk-pos-438272.tar.gz"
REAL_BLOB_ID = "cdde6f5645daea414d60bc75611102a8bc8dae6198f087366365d6ff85bf5726"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/nydus is not present")


def old_image(blob: Path | None = None) -> RafsImage:
    return RafsImage(BOOT_V6, {BLOB_OLD: blob or FIXTURES / BLOB_OLD})


def fsck_extract(bootstrap: Path, devices: list[Path], out: Path) -> None:
    fsck = shutil.which("fsck.erofs")
    if fsck is None:
        pytest.skip("fsck.erofs (Debian erofs-utils) is not installed")
    args = [fsck, *(f"--device={d}" for d in devices), f"--extract={out}", str(bootstrap)]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def expand(image: RafsImage, index: int, path: Path) -> Path:
    with path.open("wb") as out:
        expand_blob(image.blob(index), image.bootstrap.blobs[index], out)
    return path


def content(image: RafsImage, path: str) -> bytes:
    return b"".join(image.read_file(path))


# -- rafs-v6-2.2.boot + be7d77… (2023, separate bootstrap) -----------------------------------------


def test_v6_bootstrap_superblock_and_tables() -> None:
    boot = parse_bootstrap(BOOT_V6.read_bytes())
    assert (boot.flags, boot.chunk_size, boot.root_nid, boot.inode_count, boot.meta_blkaddr) == (
        0x194,
        0x100000,
        128,
        3,
        2,
    )
    assert (boot.compressor, boot.digester) == (3, 0)  # zstd, blake3
    (blob,) = boot.blobs
    assert blob.blob_id == BLOB_OLD
    assert (blob.chunk_count, blob.compressor, blob.digester, blob.features) == (2, 3, 0, 0x70000021)
    assert (blob.compressed_size, blob.uncompressed_size, blob.toc_size, blob.ci_offset) == (
        14554,
        36864,
        1024,
        8314,
    )
    assert blob.toc_digest.hex() == "cfc89ed0739aef4eb1bf0904f0dfdb1c857134eca7319465baae95a99b84acde"
    (device,) = boot.devices
    assert (device.tag, device.blocks, device.mapped_blkaddr) == (BLOB_OLD, 9, 512)
    assert len(boot.chunk_table) == 2 and boot.prefetch_nids == []


def test_v6_bootstrap_tree_and_contents_match_fsck_extract(tmp_path: Path) -> None:
    image = old_image()
    assert [(p, i.nid, i.size) for p, i in image.list_tree()] == [
        ("/", 128, 67),
        ("/lib.rs", 133, 16931),
        ("/sync_io.rs", 136, 13400),
    ]
    out = tmp_path / "out"
    fsck_extract(BOOT_V6, [expand(image, 0, tmp_path / "raw0.bin")], out)
    assert content(image, "/lib.rs") == (out / "lib.rs").read_bytes()
    assert content(image, "/sync_io.rs") == (out / "sync_io.rs").read_bytes()
    assert content(image, "/lib.rs").startswith(b"// Copyright")
    assert_same_tree(image.to_fstree(), tree_from_directory(out))


def assert_same_tree(ours: FsTree, extracted: FsTree, *, check_links: bool = True) -> None:
    """fsck.erofs sets directory mtimes while extracting; everything else must be equal."""
    differences = diff_trees(ours, extracted, ignore_fields=("mtime",))
    if not check_links:
        differences = [d for d in differences if not d.startswith("hardlinks")]
    assert differences == []
    for path, node in ours.nodes.items():
        if node.kind != "dir":
            assert node.mtime == extracted[path].mtime, path


def test_v6_blob_verifies_toc_blob_meta_and_chunks() -> None:
    reports = old_image().verify(check_blob_ids=False)  # this fixture's name is not its sha256 (README)
    (report,) = reports
    assert report.sha256 == "4b16fb83ae9f62d8263323b8569535e66ebf21171cf98fd94db9db27b59755ac"
    assert [(p.name, p.offset, p.size) for p in report.parts] == [
        ("image.blob", 0, 7802),
        ("blob.meta", 8314, 4128),
        ("blob.digest", 12954, 64),
        ("rafs.blob.toc", 13530, 512),
    ]
    assert [e.name for e in report.toc] == ["image.blob", "blob.meta", "blob.meta.header", "blob.digest"]
    assert report.toc[0].digest.hex().startswith("632d11c7")
    assert report.header is not None and report.header.features == 0x70000021
    assert [
        (c.uncompressed_offset, c.uncompressed_size, c.compressed_offset, c.compressed_size)
        for c in report.chunks
    ] == [
        (0, 16931, 0, 4828),
        (20480, 13400, 4828, 2974),
    ]
    assert report.bootstrap is None
    assert [d.hex()[:8] for d in report.chunk_digests] == ["f7e2735f", "812465bc"]


def test_strict_blob_id_check_rejects_a_blob_whose_sha256_is_not_its_id() -> None:
    with pytest.raises(BlobError, match="differs from its blob id"):
        old_image().verify()


def test_verify_blob_without_entry_needs_an_inline_bootstrap() -> None:
    with pytest.raises(BlobError, match="no inline bootstrap"):
        verify_blob(FIXTURES / BLOB_OLD)


# -- 2fa78c… (blob with inline bootstrap) ----------------------------------------------------------


def test_inline_blob_tree_contents_and_fsck(tmp_path: Path) -> None:
    image = RafsImage.from_blob(FIXTURES / BLOB_INLINE)
    (report,) = image.verify()  # sha256 of this file is its name
    assert report.sha256 == BLOB_INLINE
    assert [e.name for e in report.toc] == ["image.blob", "blob.meta", "blob.meta.header", "image.boot"]
    assert report.bootstrap is not None
    assert hashlib.sha256(report.bootstrap).hexdigest().startswith("d85f1b77")
    boot = image.bootstrap
    assert boot.flags == 0x94 and boot.blobs[0].blob_id.startswith("d788a0ea") and boot.blobs[0].features == 1
    assert {p: i.size for p, i in image.list_tree() if p != "/"} == {
        "/error.rs": 2816,
        "/lib.rs": 678,
        "/logger.rs": 3115,
    }
    bootstrap_file = tmp_path / "image.boot"
    bootstrap_file.write_bytes(report.bootstrap)
    out = tmp_path / "out"
    fsck_extract(bootstrap_file, [expand(image, 0, tmp_path / "raw0.bin")], out)
    for name in ("error.rs", "lib.rs", "logger.rs"):
        assert content(image, "/" + name) == (out / name).read_bytes()
    assert_same_tree(image.to_fstree(), tree_from_directory(out))


def test_zstd_copy_of_the_inline_blob_is_identical(tmp_path: Path) -> None:
    raw = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress((FIXTURES / f"{BLOB_INLINE}.zst").read_bytes())
    )
    copy = tmp_path / BLOB_INLINE
    copy.write_bytes(raw)
    assert verify_blob(copy).sha256 == BLOB_INLINE


# -- real-image bootstrap layer (2022) and the zran blob.meta ---------------------------------------


def test_real_image_bootstrap_layer(tmp_path: Path) -> None:
    layer = open_bootstrap_layer(REAL_LAYER)
    assert layer.blob_metas == {}
    assert hashlib.sha256(layer.bootstrap).hexdigest().startswith("4f9744a8")
    image = RafsImage.from_bootstrap_layer(REAL_LAYER)
    boot = image.bootstrap
    assert (boot.inode_count, sum(1 for _ in boot.walk()), boot.flags, boot.prefetch_nids) == (
        3517,
        3517,
        0x6,
        [142],
    )
    (blob,) = boot.blobs
    assert (blob.blob_id, blob.chunk_count, blob.compressor, blob.ci_compressor) == (REAL_BLOB_ID, 2515, 1, 1)
    assert (blob.compressed_size, blob.uncompressed_size) == (43090887, 83767296)
    assert len(boot.chunk_table) == 2515
    tree = image.to_fstree(content=False)
    # 2022 builders wrote hardlinks as copies sharing i_ino; the reader still groups them.
    assert {
        frozenset({"/usr/bin/perl", "/usr/bin/perl5.34.0"}),
        frozenset({"/usr/bin/gunzip", "/usr/bin/uncompress"}),
    } <= (tree.hardlink_groups())
    kinds = {node.kind for node in tree.nodes.values()}
    assert {"dir", "reg", "symlink"} <= kinds
    assert tree["/usr/bin/perl"].size == 3806264
    with pytest.raises(BlobError, match="was not provided"):
        content(image, "/usr/bin/perl")


def test_real_image_tree_matches_fsck_extract_on_a_zero_device(tmp_path: Path) -> None:
    """No blob exists for this bootstrap: a sparse zero device lets fsck.erofs extract the metadata."""
    layer = open_bootstrap_layer(REAL_LAYER)
    bootstrap = tmp_path / "image.boot"
    bootstrap.write_bytes(layer.bootstrap)
    image = RafsImage(layer.bootstrap)
    zero = tmp_path / "zero.bin"
    with zero.open("wb") as handle:
        handle.truncate(image.bootstrap.devices[0].blocks * 4096)
    out = tmp_path / "out"
    fsck_extract(bootstrap, [zero], out)
    ours = image.to_fstree(content=False)
    extracted = tree_from_directory(out)
    differences = diff_trees(ours, extracted, ignore_fields=("mtime", "digest"))
    # erofs-utils 1.5 extracts hardlinks as separate copies (spec §12.1), and its chown after chmod
    # clears setuid/setgid bits, which the reader keeps.
    setid_lost = re.compile(r"(.*): mode (\d+) != (\d+)")
    unexplained = []
    for difference in differences:
        match = setid_lost.fullmatch(difference)
        if difference.startswith("hardlinks") or (match and int(match[2]) & ~0o6000 == int(match[3])):
            continue
        unexplained.append(difference)
    assert unexplained == []
    assert ours["/usr/bin/chage"].mode == 0o2755
    assert all(node.mtime == extracted[p].mtime for p, node in ours.nodes.items() if node.kind != "dir")


def test_zran_blob_meta_cache_file() -> None:
    header, ci, infos = parse_blob_meta_file((FIXTURES / ZRAN_META).read_bytes())
    assert (header.features, header.ci_compressor, header.ci_entries, header.ci_offset) == (0xF, 0, 163, 0)
    assert (header.ci_compressed_size, header.ci_uncompressed_size) == (660112, 660112)
    assert (header.zran_offset, header.zran_size, header.zran_count) == (3912, 656200, 21)
    assert len(ci) == 660112 and len(infos) == 163
    first = infos[0]
    assert (first.uncompressed_offset, first.uncompressed_size, first.flags) == (0, 1404, 0x03)
    assert (first.compressed_offset, first.compressed_size, first.data) == (184, 649, 1024)


def test_rafs_v5_bootstraps_are_rejected_as_unsupported() -> None:
    for name in ("sha256-nocompress-repeatable", "blake3-lz4_block-non_repeatable"):
        with pytest.raises(UnsupportedNydusError, match=r"RAFS v5 bootstrap .* not supported"):
            RafsImage(FIXTURES / name)


def test_non_bootstrap_input_is_rejected() -> None:
    with pytest.raises(BootstrapError, match="not a RAFS v6 bootstrap"):
        parse_bootstrap((FIXTURES / "all-entry-type.tar").read_bytes())
    with pytest.raises(BootstrapError, match="at least 4096"):
        parse_bootstrap(b"\0" * 100)
    with pytest.raises(BlobError):
        NydusBlob(FIXTURES / "all-entry-type.tar")


# -- corruption -------------------------------------------------------------------------------------


def flipped(source: Path, tmp_path: Path, offset: int, mask: int = 0x01) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= mask
    copy = tmp_path / source.name
    copy.write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize("offset", [10, 4000, 7801])
def test_flipped_chunk_byte_is_detected_by_reads_and_verify(tmp_path: Path, offset: int) -> None:
    image = old_image(flipped(FIXTURES / BLOB_OLD, tmp_path, offset))
    path = "/lib.rs" if offset < 4828 else "/sync_io.rs"
    with pytest.raises(BlobError, match=r"chunk|zstd"):
        content(image, path)
    with pytest.raises(BlobError):
        image.verify(check_blob_ids=False)


@pytest.mark.parametrize("offset", range(8314, 8346, 3))
def test_flipped_chunk_info_byte_is_detected(tmp_path: Path, offset: int) -> None:
    """The CI array of be7d77… sits at 8314..8346 (2 x 16 bytes)."""
    with pytest.raises(BlobError):
        old_image(flipped(FIXTURES / BLOB_OLD, tmp_path, offset)).verify(check_blob_ids=False)


def test_chunk_digest_mismatch_names_the_chunk(tmp_path: Path) -> None:
    """A chunk-table digest that disagrees with the data (the bootstrap's digest of chunk 1 is flipped)."""
    boot = bytearray(BOOT_V6.read_bytes())
    boot[0x4000] ^= 0x01  # first chunk-table entry = CI index 1
    image = RafsImage(bytes(boot), {BLOB_OLD: FIXTURES / BLOB_OLD})
    with pytest.raises(BlobError, match=r"chunk 1 .*digest"):
        image.verify(check_blob_ids=False)
    with pytest.raises(BlobError, match=r"sync_io.rs chunk 0 .*digest .* != chunk table"):
        content(image, "/sync_io.rs")


def test_chunk_crc32_is_checked_when_flagged() -> None:
    """HAS_CRC32 (current builders) makes the reader check CRC-32C of every decompressed chunk."""
    sync_io = content(old_image(), "/sync_io.rs")
    boot = bytearray(BOOT_V6.read_bytes())
    record = 0x4000  # chunk-table entry of CI index 1 = /sync_io.rs
    struct.pack_into("<I", boot, record + 36, 0x1 | 0x10)
    struct.pack_into("<I", boot, record + 76, crc32c(sync_io))
    image = old_image_from(bytes(boot))
    assert content(image, "/sync_io.rs") == sync_io
    image.verify(check_blob_ids=False)
    struct.pack_into("<I", boot, record + 76, crc32c(sync_io) ^ 1)
    with pytest.raises(BlobError, match="CRC-32C"):
        content(old_image_from(bytes(boot)), "/sync_io.rs")
    with pytest.raises(BlobError, match="CRC-32C"):
        old_image_from(bytes(boot)).verify(check_blob_ids=False)


def test_every_sampled_blob_byte_flip_is_detected(tmp_path: Path) -> None:
    """Every byte of a blob is covered by a digest or a structural rule: sample a stride of them."""
    source = (FIXTURES / BLOB_OLD).read_bytes()
    missed = []
    for offset in [*range(0, len(source), 11), len(source) - 1]:
        try:
            old_image(flipped(FIXTURES / BLOB_OLD, tmp_path, offset)).verify(check_blob_ids=False)
        except FormatError:
            continue
        missed.append(offset)
    assert missed == []


# The regions of rafs-v6-2.2.boot that hold structures (the rest is zero padding).
_STRUCTURE_REGIONS = [(0x400, 0x600), (0x1000, 0x1100), (0x3000, 0x3150), (0x4000, 0x40A0)]

# Bytes there whose change leaves a valid RAFS v6 image (attributes, names, reserved space).
_ATTRIBUTE_BYTES = [
    (0x408, 0x40C, "s_feature_compat other bits"),
    (0x418, 0x424, "s_build_time"),
    (0x430, 0x450, "s_uuid, s_volume_name"),
    (0x45A, 0x480, "superblock reserved (newer EROFS fields)"),
    (0x483, 0x484, "s_flags ENCRYPTION_NONE byte"),
    (0x4A8, 0x4B4, "prefetch table offset/size without a table"),
    (0x5C8, 0x600, "device slot reserved, unused slots"),
    (0x10A8, 0x10D8, "blob_meta_digest / blob_meta_size (zran only)"),
    (0x10DC, 0x1100, "blob entry reserved"),
    (0x3004, 0x3009, "root i_mode permission bits, reserved, i_size (a shorter last name)"),
    (0x3010, 0x3040, "root i_u (inline), i_ino, uid, gid, mtime, reserved"),
    (0x306C, 0x306D, "dirent name offset moving one character between two names"),
    (0x3073, 0x30A0, "dirent names (kept sorted), tail padding"),
    (0x30A4, 0x30A8, "i_mode permission bits, reserved"),
    (0x30B5, 0x30CC, "i_ino high bytes, uid, gid, mtime"),
    (0x30D0, 0x30E0, "extended inode reserved"),
    (0x30E8, 0x3100, "padding after the chunk address"),
    (0x3104, 0x3108, "i_mode permission bits, reserved"),
    (0x3115, 0x312C, "i_ino high bytes, uid, gid, mtime"),
    (0x3130, 0x3140, "extended inode reserved"),
    (0x3148, 0x3150, "padding"),
    (0x4040, 0x4048, "chunk record file_offset"),
    (0x404C, 0x4050, "chunk record crc32 without HAS_CRC32"),
    (0x4090, 0x4098, "chunk record file_offset"),
    (0x409C, 0x40A0, "chunk record crc32 without HAS_CRC32"),
]


def _attribute_byte(offset: int) -> bool:
    return any(start <= offset < end for start, end, _ in _ATTRIBUTE_BYTES)


def test_every_structural_bootstrap_byte_flip_is_detected() -> None:
    """Flip the low bit of each structure byte: structure changes raise FormatError, nothing crashes."""
    source = BOOT_V6.read_bytes()
    missed = []
    for offset in (o for start, end in _STRUCTURE_REGIONS for o in range(start, end)):
        data = bytearray(source)
        data[offset] ^= 0x01
        try:
            old_image_from(bytes(data)).verify(check_blob_ids=False)
        except FormatError:
            continue
        if not _attribute_byte(offset):
            missed.append(hex(offset))
    assert missed == []


def old_image_from(bootstrap: bytes) -> RafsImage:
    return RafsImage(bootstrap, {BLOB_OLD: FIXTURES / BLOB_OLD})


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (1024, "magic"),
        (1024 + 12, "s_blkszbits"),
        (1024 + 80, "s_feature_incompat"),
        (1024 + 86, "s_extra_devices"),
        (1152, "s_flags"),
        (1152 + 20 + 2, "s_chunk_size"),
        (0x580, "device slot 0"),
        (0x1000 + 64, "blob_index"),
        (0x1000 + 84, "features"),
        (0x3001, "i_format"),
        (0x3048, "e_nameoff|out of order|invalid name"),
        (0x30E0 + 2, "device id"),
        (0x4000 + 32, "blob_index"),
    ],
)
def test_bootstrap_corruption_messages_name_the_structure(offset: int, message: str) -> None:
    data = bytearray(BOOT_V6.read_bytes())
    data[offset] ^= 0x01
    with pytest.raises(FormatError, match=message):
        old_image_from(bytes(data)).verify(check_blob_ids=False)


def test_zstd_data_never_inflates_past_the_expected_size() -> None:
    """Chunk and metadata sizes come from untrusted input: a frame holding more is refused up front."""
    plenty = b"\0" * (1 << 20)
    with pytest.raises(BlobError, match="holds 1048576 bytes, expected 4096"):
        decompress(COMPRESSOR_ZSTD, zstandard.ZstdCompressor().compress(plenty), 4096, "chunk")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(plenty)
    with pytest.raises(BlobError, match="holds 4097 bytes, expected 4096"):
        decompress(COMPRESSOR_ZSTD, unsized, 4096, "chunk")
    assert decompress(COMPRESSOR_ZSTD, unsized, len(plenty), "chunk") == plenty
    with pytest.raises(BlobError, match="trailing bytes"):
        decompress(COMPRESSOR_ZSTD, zstandard.ZstdCompressor().compress(b"abc") + b"junk", 3, "chunk")


def _gzip_tar(path: Path, entries: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_bootstrap_layer_shape_is_enforced(tmp_path: Path) -> None:
    boot = BOOT_V6.read_bytes()
    with pytest.raises(FormatError, match="unexpected entry 'image/extra'"):
        open_bootstrap_layer(_gzip_tar(tmp_path / "a.tgz", {"image/image.boot": boot, "image/extra": b"x"}))
    with pytest.raises(FormatError, match=r"no image/image\.boot"):
        open_bootstrap_layer(_gzip_tar(tmp_path / "b.tgz", {"image/" + "a" * 64 + ".blob.meta": b""}))
    with pytest.raises(FormatError, match="not a readable gzip tar"):
        open_bootstrap_layer(BOOT_V6)
    legacy = open_bootstrap_layer(_gzip_tar(tmp_path / "c.tgz", {"image.boot": boot}))
    assert legacy.bootstrap[:] == boot
    with pytest.raises(FormatError, match="no blob with this id"):
        RafsImage.from_bootstrap_layer(
            _gzip_tar(tmp_path / "d.tgz", {"image/image.boot": boot, "image/" + "a" * 64 + ".blob.meta": b""})
        )


# -- the kernel's EROFS driver as a second judge (needs root and loop devices) ----------------------


@contextlib.contextmanager
def kernel_mount(bootstrap: Path, devices: list[Path], mountpoint: Path) -> Iterator[Path]:
    if shutil.which("losetup") is None or "erofs" not in Path("/proc/filesystems").read_text():
        pytest.skip("no losetup or no erofs in this kernel")
    mountpoint.mkdir()
    with contextlib.ExitStack() as stack:
        loops = []
        for path in [bootstrap, *devices]:
            attached = subprocess.run(
                ["losetup", "-f", "--show", "-r", str(path)], capture_output=True, text=True
            )
            if attached.returncode != 0:
                pytest.skip(f"loop devices are not available here: {attached.stderr.strip()}")
            loops.append(attached.stdout.strip())
            stack.callback(subprocess.run, ["losetup", "-d", loops[-1]], check=False)
        options = ",".join(["ro", *(f"device={loop}" for loop in loops[1:])])
        mounted = subprocess.run(
            ["mount", "-t", "erofs", "-o", options, loops[0], str(mountpoint)], capture_output=True, text=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"the kernel refused the loop mount here: {mounted.stderr.strip()}")
        stack.callback(subprocess.run, ["umount", str(mountpoint)], check=True)
        yield mountpoint


def test_kernel_serves_the_tree_the_reader_reads(tmp_path: Path) -> None:
    image = old_image()
    raw = expand(image, 0, tmp_path / "raw0.bin")
    with kernel_mount(BOOT_V6, [raw], tmp_path / "mnt") as mnt:
        assert diff_trees(image.to_fstree(), tree_from_directory(mnt)) == []
    inline = RafsImage.from_blob(FIXTURES / BLOB_INLINE)
    bootstrap = tmp_path / "inline.boot"
    bootstrap.write_bytes(NydusBlob(FIXTURES / BLOB_INLINE).inline_bootstrap() or b"")
    raw = expand(inline, 0, tmp_path / "raw1.bin")
    with kernel_mount(bootstrap, [raw], tmp_path / "mnt2") as mnt:
        assert diff_trees(inline.to_fstree(), tree_from_directory(mnt)) == []


def test_kernel_agrees_on_the_real_image_metadata(tmp_path: Path) -> None:
    """Directories, modes incl. setuid/setgid, owners, mtimes, symlinks, devices, xattrs: 3517 entries."""
    layer = open_bootstrap_layer(REAL_LAYER)
    bootstrap = tmp_path / "image.boot"
    bootstrap.write_bytes(layer.bootstrap)
    image = RafsImage(layer.bootstrap)
    zero = tmp_path / "zero.bin"
    with zero.open("wb") as handle:
        handle.truncate(image.bootstrap.devices[0].blocks * 4096)
    with kernel_mount(bootstrap, [zero], tmp_path / "mnt") as mnt:
        differences = diff_trees(
            image.to_fstree(content=False), tree_from_directory(mnt), ignore_fields=("digest",)
        )
    # 2022 builders wrote hardlinks as separate inodes sharing i_ino: the kernel sees two files,
    # the reader one file with two names (nlink 2 on both copies).
    assert sorted(differences) == [
        "hardlinks missing: ['/usr/bin/gunzip', '/usr/bin/uncompress']",
        "hardlinks missing: ['/usr/bin/perl', '/usr/bin/perl5.34.0']",
    ]


def test_zran_contexts_and_dictionaries_of_the_upstream_blob_meta() -> None:
    header, ci, infos = parse_blob_meta_file((FIXTURES / ZRAN_META).read_bytes())
    contexts = parse_zran_tables(
        ci, header.ci_entries, header.zran_offset, header.zran_size, header.zran_count, "fixture"
    )
    assert len(contexts) == 21
    first, second = contexts[0], contexts[1]
    assert (first.in_offset, first.out_offset, first.dict_offset, first.dict_size) == (10, 0, 0, 0)
    assert (first.in_len, first.out_len, first.ctx_bits) == (200380, 1052790, 0)
    assert (second.in_offset, second.out_offset, second.dict_offset, second.dict_size) == (
        187761,
        987149,
        0,
        32768,
    )
    assert (second.ctx_byte, second.ctx_bits) == (103, 5)
    assert contexts[2].dict_offset == 32768
    assert all(len(ctx.window) == ctx.dict_size for ctx in contexts)
    for info in infos:  # every chunk lies inside the output of its context
        check_zran_chunk(info.index, info.flags, info.data, info.uncompressed_size, contexts, "fixture")
    uoffs = [info.uncompressed_offset for info in infos]
    assert uoffs == sorted(uoffs) and all(off % 4096 == 0 for off in uoffs)


def test_corrupt_zran_tables_are_named() -> None:
    header, ci, _ = parse_blob_meta_file((FIXTURES / ZRAN_META).read_bytes())
    table = header.zran_offset
    bad_dict = bytearray(ci)
    struct.pack_into("<Q", bad_dict, table + 40 + 16, 5)  # context 1 dict_offset off the running sum
    bad_bits = bytearray(ci)
    bad_bits[table + 37] = 9
    for raw, message in ((bad_dict, "dict_offset"), (bad_bits, "ctx_bits")):
        with pytest.raises(BlobError, match=message):
            parse_zran_tables(
                bytes(raw), header.ci_entries, header.zran_offset, header.zran_size, header.zran_count, "x"
            )
    with pytest.raises(BlobError, match="ci_zran_offset"):
        parse_zran_tables(ci, header.ci_entries + 1, header.zran_offset, header.zran_size, 21, "x")
