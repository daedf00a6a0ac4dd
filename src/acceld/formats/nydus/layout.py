"""On-disk constants and fixed-size records of the Nydus blob stream and the RAFS v6 bootstrap.

Every integer is little-endian. Section numbers refer to docs/formats/nydus-rafs-v6.md.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

BLOCK = 4096
ROOT_NID = 128

# §5.2 superblock
SB_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
FEATURE_COMPAT_RAFS_V6 = 0x40000000
FEATURE_INCOMPAT = 0x4 | 0x8  # CHUNKED_FILE | DEVICE_TABLE
DEVT_SLOTOFF = 11
DEVICE_TABLE_OFFSET = DEVT_SLOTOFF * 128
EXT_SB_OFFSET = SB_OFFSET + 128
DEVICE_SLOT_SIZE = 128
BLOB_ENTRY_SIZE = 256
CHUNK_RECORD_SIZE = 80
FLAT_DEVICE_ALIGN = 0x80000

# §5.3 RafsSuperFlags
FLAG_COMPRESSION = {"none": 0x1, "lz4_block": 0x2, "gzip": 0x40, "zstd": 0x80}
FLAG_HASH = {"blake3": 0x4, "sha256": 0x8}
FLAG_EXPLICIT_UID_GID = 0x10
FLAG_HAS_XATTR = 0x20
FLAG_INLINED_CHUNK_DIGEST = 0x100
FLAG_ENCRYPTION_NONE = 0x0100_0000

# §5.5 blob table codes and BlobFeatures
COMPRESSION_CODE = {"none": 0, "lz4_block": 1, "gzip": 2, "zstd": 3}
COMPRESSION_NAME = {code: name for name, code in COMPRESSION_CODE.items()}
DIGEST_CODE = {"blake3": 0, "sha256": 1}
DIGEST_NAME = {code: name for name, code in DIGEST_CODE.items()}
BLOB_ALIGNED = 0x1
BLOB_INLINED_FS_META = 0x2
BLOB_CHUNK_INFO_V2 = 0x4
BLOB_ZRAN = 0x8
BLOB_SEPARATE = 0x10
BLOB_INLINED_CHUNK_DIGEST = 0x20
BLOB_HAS_TAR_HEADER = 0x1000_0000
BLOB_HAS_TOC = 0x2000_0000
BLOB_CAP_TAR_TOC = 0x4000_0000
LAYER_BLOB_FEATURES = (
    BLOB_ALIGNED
    | BLOB_INLINED_FS_META
    | BLOB_INLINED_CHUNK_DIGEST
    | BLOB_HAS_TAR_HEADER
    | BLOB_HAS_TOC
    | BLOB_CAP_TAR_TOC
)
# a zran ref blob's meta (nydus-zran.md §5.5); merge drops INLINED_FS_META as for native blobs
ZRAN_BLOB_FEATURES = LAYER_BLOB_FEATURES | BLOB_CHUNK_INFO_V2 | BLOB_ZRAN | BLOB_SEPARATE
PLACEHOLDER_BLOB_ID = "x" * 64

# §5.6 inode formats and EROFS file types
INODE_EXTENDED = 0x1
LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
LAYOUT_CHUNK_BASED = 4
INODE_SIZE = 64
CHUNK_FORMAT_INDEXES = 0x20
DIRENT_SIZE = 12
FT_REG, FT_DIR, FT_CHR, FT_BLK, FT_FIFO, FT_SOCK, FT_SYMLINK = 1, 2, 3, 4, 5, 6, 7

# §5.8 xattr name prefixes
XATTR_PREFIXES: tuple[tuple[bytes, int], ...] = (
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
)
XATTR_PREFIX_OF_INDEX = {index: prefix for prefix, index in XATTR_PREFIXES}


def xattr_name_index(name: bytes) -> tuple[int, bytes] | None:
    """(EROFS prefix index, name suffix) for a supported xattr name, else None."""
    for prefix, index in XATTR_PREFIXES:
        if prefix.endswith(b".") and name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix) :]
        if name == prefix:
            return index, b""
    return None


# §5.9 chunk flags
CHUNK_COMPRESSED = 0x1
CI_COMPRESSED_ZRAN = 0x3  # CI v2 flags of a zran chunk

# §4.3 TOC
TOC_ENTRY_SIZE = 128
TOC_FLAG = {"none": 0x1, "zstd": 0x2, "lz4_block": 0x4}
TOC_COMPRESSOR_OF_FLAG = {flag: name for name, flag in TOC_FLAG.items()}
TAR_BLOCK = 512

# §6.4 blob-meta header
BLOB_META_MAGIC = 0xB10BB10B
BLOB_META_HEADER_SIZE = 4096

MIN_CHUNK_SIZE = 0x1000
MAX_CHUNK_SIZE = 0x100_0000
MAX_CHUNKS_PER_BLOB = 1 << 24


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class BlobInfo:
    """One blob-table entry (§5.5). The TOC and meta-blob fields are set for zran blobs only
    (nydus-zran.md §7); cipher fields are always zero."""

    blob_id: str
    chunk_size: int
    chunk_count: int
    compressor: str
    digester: str
    features: int
    compressed_size: int
    uncompressed_size: int
    ci_compressor: str
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    toc_size: int = 0
    toc_digest: bytes = bytes(32)
    meta_digest: bytes = bytes(32)  # the zran ref blob's sha256
    meta_size: int = 0

    def pack(self, index: int) -> bytes:
        head = struct.pack(
            "<64sIIIIII",
            self.blob_id.encode("ascii"),
            index,
            self.chunk_size,
            self.chunk_count,
            COMPRESSION_CODE[self.compressor],
            DIGEST_CODE[self.digester],
            self.features,
        )
        sizes = struct.pack(
            "<QQIIQQQ",
            self.compressed_size,
            self.uncompressed_size,
            self.toc_size,
            COMPRESSION_CODE[self.ci_compressor],
            self.ci_offset,
            self.ci_compressed_size,
            self.ci_uncompressed_size,
        )
        meta = struct.pack("<32s32sQ", self.toc_digest, self.meta_digest, self.meta_size)
        return (head + sizes + meta).ljust(BLOB_ENTRY_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[int, BlobInfo]:
        blob_id, index, chunk_size, count, comp, digest, features = struct.unpack_from("<64sIIIIII", raw)
        csize, usize, toc_size, ci_comp, ci_off, ci_csize, ci_usize = struct.unpack_from("<QQIIQQQ", raw, 88)
        toc_digest, meta_digest, meta_size = struct.unpack_from("<32s32sQ", raw, 136)
        try:
            info = cls(
                blob_id=blob_id.rstrip(b"\0").decode("ascii"),
                chunk_size=chunk_size,
                chunk_count=count,
                compressor=COMPRESSION_NAME[comp],
                digester=DIGEST_NAME[digest],
                features=features,
                compressed_size=csize,
                uncompressed_size=usize,
                ci_compressor=COMPRESSION_NAME[ci_comp],
                ci_offset=ci_off,
                ci_compressed_size=ci_csize,
                ci_uncompressed_size=ci_usize,
                toc_size=toc_size,
                toc_digest=toc_digest,
                meta_digest=meta_digest,
                meta_size=meta_size,
            )
        except (KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"unsupported blob table entry: {exc}") from exc
        return index, info


def pack_blob_meta_header(
    features: int,
    ci_compressor: str,
    entries: int,
    ci_offset: int,
    ci_compressed_size: int,
    ci_uncompressed_size: int,
    zran_count: int = 0,
    zran_size: int = 0,
) -> bytes:
    """The 4096-byte BlobCompressionContextHeader (§6.4); zran tables follow 24-byte CI v2 entries."""
    zran_offset = 24 * entries if zran_count else 0
    head = struct.pack(
        "<IIIIQQQQQI",
        BLOB_META_MAGIC,
        features,
        COMPRESSION_CODE[ci_compressor],
        entries,
        ci_offset,
        ci_compressed_size,
        ci_uncompressed_size,
        zran_offset,
        zran_size,
        zran_count,
    )
    return head.ljust(BLOB_META_HEADER_SIZE - 4, b"\0") + struct.pack("<I", BLOB_META_MAGIC)


_CI_V1 = struct.Struct("<QQ")


def pack_ci_v1(
    uncompressed_offset: int, uncompressed_size: int, compressed_offset: int, compressed_size: int
) -> bytes:
    """One 16-byte chunk-info v1 entry (§6.2)."""
    usize, csize = uncompressed_size - 1, compressed_size - 1
    uncomp = uncompressed_offset | ((usize >> 20) & 0xF) << 8 | (usize & 0xFFFFF) << 44
    comp = compressed_offset | ((csize >> 20) & 0xF) << 40 | (csize & 0xFFFFF) << 44
    return _CI_V1.pack(uncomp, comp)


def unpack_ci_v1(raw: bytes | bytearray, offset: int = 0) -> tuple[int, int, int, int]:
    """(uncompressed offset, uncompressed size, compressed offset, compressed size) of a chunk-info
    v1 entry: `pack_ci_v1` read back."""
    uncomp, comp = _CI_V1.unpack_from(raw, offset)
    usize = ((uncomp >> 44) & 0xFFFFF | ((uncomp >> 8) & 0xF) << 20) + 1
    csize = ((comp >> 44) & 0xFFFFF | ((comp >> 40) & 0xF) << 20) + 1
    return uncomp & ((1 << 44) - 1) & ~0xFFF, usize, comp & ((1 << 40) - 1), csize


def pack_ci_v2_zran(
    uncompressed_offset: int,
    uncompressed_size: int,
    compressed_offset: int,
    compressed_size: int,
    context: int,
    context_offset: int,
) -> bytes:
    """One 24-byte chunk-info v2 entry of a zran chunk: COMPRESSED | ZRAN (nydus-zran.md §5.2)."""
    uncomp = uncompressed_offset >> 12 | (uncompressed_size - 1) << 32 | CI_COMPRESSED_ZRAN << 56
    comp = compressed_offset | compressed_size << 40
    return struct.pack("<QQQ", uncomp, comp, context << 32 | context_offset)


def pack_zran_context(
    in_offset: int,
    out_offset: int,
    dict_offset: int,
    in_len: int,
    out_len: int,
    dict_size: int,
    ctx_byte: int,
    ctx_bits: int,
) -> bytes:
    """One 40-byte zran inflate context (nydus-zran.md §5.3)."""
    return struct.pack(
        "<QQQIIIBBH", in_offset, out_offset, dict_offset, in_len, out_len, dict_size, ctx_byte, ctx_bits, 0
    )


def gnu_tar_header(name: str, size: int) -> bytes:
    """The 512-byte GNU header that follows each part of a blob stream (§4.2)."""
    header = bytearray(TAR_BLOCK)
    header[0 : len(name)] = name.encode("ascii")
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar  \0"
    header[148:156] = b"%07o\0" % sum(header)
    return bytes(header)


def pack_toc_entry(
    name: str, compressor: str, digest: bytes, offset: int, compressed_size: int, uncompressed_size: int
) -> bytes:
    entry = struct.pack(
        "<II16s32sQQQ",
        TOC_FLAG[compressor],
        0,
        name.encode("ascii"),
        digest,
        offset,
        compressed_size,
        uncompressed_size,
    )
    return entry.ljust(TOC_ENTRY_SIZE, b"\0")


@dataclass(frozen=True)
class TocEntry:
    name: str
    compressor: str
    digest: bytes
    offset: int
    compressed_size: int
    uncompressed_size: int

    @classmethod
    def unpack(cls, raw: bytes) -> TocEntry:
        flags, _, name, digest, offset, csize, usize = struct.unpack_from("<II16s32sQQQ", raw)
        compressor = TOC_COMPRESSOR_OF_FLAG.get(flags & 0xF)
        if compressor is None:
            raise ValueError(f"unknown TOC compressor flags {flags:#x}")
        return cls(name.rstrip(b"\0").decode("ascii", "replace"), compressor, digest, offset, csize, usize)
