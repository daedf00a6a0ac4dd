"""Errors, codecs and small helpers shared by the independent RAFS v6 / Nydus blob reader.

The reader deliberately shares no code with the Nydus writer: it is the cross-check that
catches writer bugs, so it re-derives every rule from the format document.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

import blake3
import fastcrc
import lz4.block
import zstandard

from acceld.formats.driver import FormatError


class NydusFormatError(FormatError):
    """A Nydus bootstrap, blob or bootstrap layer violates the RAFS v6 / Nydus format."""


class BootstrapError(NydusFormatError):
    """The RAFS v6 bootstrap (metadata) is malformed or inconsistent."""


class BlobError(NydusFormatError):
    """A Nydus blob layer (TOC, blob meta, chunk data, digests) is malformed or corrupt."""


class UnsupportedNydusError(NydusFormatError):
    """Well-formed input that this reader does not handle (RAFS v5, tarfs, encryption, zran data)."""


BLOCK_SIZE: Final = 4096
TAR_HEADER_SIZE: Final = 512

# compression_algo / ci_compressor codes of the blob table and blob-meta header
COMPRESSOR_NONE: Final = 0
COMPRESSOR_LZ4_BLOCK: Final = 1
COMPRESSOR_GZIP: Final = 2
COMPRESSOR_ZSTD: Final = 3
COMPRESSOR_NAMES: Final = {0: "none", 1: "lz4_block", 2: "gzip", 3: "zstd"}

DIGESTER_BLAKE3: Final = 0
DIGESTER_SHA256: Final = 1
DIGESTER_NAMES: Final = {0: "blake3", 1: "sha256"}

# BlobFeatures
FEATURE_ALIGNED: Final = 0x1
FEATURE_INLINED_FS_META: Final = 0x2
FEATURE_CHUNK_INFO_V2: Final = 0x4
FEATURE_ZRAN: Final = 0x8
FEATURE_SEPARATE: Final = 0x10
FEATURE_INLINED_CHUNK_DIGEST: Final = 0x20
FEATURE_BATCH: Final = 0x80
FEATURE_ENCRYPTED: Final = 0x100
FEATURE_IS_CHUNKDICT_GENERATED: Final = 0x200
FEATURE_HAS_TOC: Final = 0x2000_0000
KNOWN_BLOB_FEATURES: Final = 0x7000_0FFF  # 0x1..0x800, HAS_TAR_HEADER, HAS_TOC, CAP_TAR_TOC


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def u8(buf: bytes, off: int) -> int:
    return buf[off]


def u16(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<H", buf, off)[0]
    return value


def u32(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", buf, off)[0]
    return value


def u64(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<Q", buf, off)[0]
    return value


def cstring(raw: bytes) -> bytes:
    """Bytes up to the first NUL."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def decompress(algo: int, data: bytes, size: int, what: str) -> bytes:
    """Decompress `data` with a blob-table compressor code; the result must be exactly `size` bytes."""
    if algo == COMPRESSOR_NONE:
        out = data
    elif algo == COMPRESSOR_ZSTD:
        out = _zstd_exact(data, size, what)
    elif algo == COMPRESSOR_LZ4_BLOCK:
        try:
            out = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise BlobError(f"{what}: lz4_block data does not decompress ({exc})") from exc
    elif algo == COMPRESSOR_GZIP:
        raise UnsupportedNydusError(f"{what}: gzip chunks exist only in zran (OCI-ref) blobs")
    else:
        raise BlobError(f"{what}: unknown compressor code {algo}")
    if len(out) != size:
        raise BlobError(f"{what}: decompressed to {len(out)} bytes, expected {size}")
    return out


def _zstd_exact(data: bytes, size: int, what: str) -> bytes:
    """One zstd frame that yields exactly `size` bytes; never inflates past `size` (untrusted input)."""
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared == zstandard.CONTENTSIZE_UNKNOWN:
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            declared = len(reader.read(size + 1))
        if declared != size:
            raise BlobError(f"{what}: zstd frame holds {declared} bytes, expected {size}")
        decoder = zstandard.ZstdDecompressor().decompressobj()
        out: bytes = decoder.decompress(data)
    except zstandard.ZstdError as exc:
        raise BlobError(f"{what}: zstd data does not decompress ({exc})") from exc
    if not decoder.eof:
        raise BlobError(f"{what}: zstd frame is truncated")
    if decoder.unused_data:
        raise BlobError(f"{what}: {len(decoder.unused_data)} trailing bytes after the zstd frame")
    if len(out) != size:
        raise BlobError(f"{what}: decompressed to {len(out)} bytes, expected {size}")
    return out


def chunk_digest(digester: int, data: bytes) -> bytes:
    if digester == DIGESTER_BLAKE3:
        return bytes(blake3.blake3(data).digest())
    if digester == DIGESTER_SHA256:
        return hashlib.sha256(data).digest()
    raise BlobError(f"unknown chunk digest algorithm {digester}")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, iSCSI) as the chunk crc32 fields hold it."""
    value: int = fastcrc.crc32.iscsi(data)
    return value


def parse_tar_header(raw: bytes, where: str) -> tuple[str, int]:
    """Name and size of one 512-byte GNU/ustar header as the Nydus blob stream writes them."""
    if len(raw) != TAR_HEADER_SIZE:
        raise BlobError(f"{where}: truncated tar header ({len(raw)} of 512 bytes)")
    stored = raw[148:156]
    try:
        checksum = int(cstring(stored).strip(b" ") or b"-1", 8)
    except ValueError as exc:
        raise BlobError(f"{where}: tar header checksum field {stored!r} is not octal") from exc
    computed = sum(raw[:148]) + 8 * 0x20 + sum(raw[156:])
    if checksum != computed:
        raise BlobError(f"{where}: tar header checksum {checksum:o}, computed {computed:o}")
    if raw[156:157] not in (b"0", b"\0"):
        raise BlobError(f"{where}: tar header type {raw[156:157]!r}, expected a regular file '0'")
    name = cstring(raw[0:100]).decode("ascii", "replace")
    size_field = raw[124:136]
    try:
        size = int(cstring(size_field).strip(b" ") or b"0", 8)
    except ValueError as exc:
        raise BlobError(f"{where}: tar header size field {size_field!r} is not octal") from exc
    return name, size
