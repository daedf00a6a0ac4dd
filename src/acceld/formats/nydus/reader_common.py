"""Errors, codecs and small helpers shared by the independent RAFS v6 / Nydus blob reader.

The reader deliberately shares no code with the Nydus writer: it is the cross-check that
catches writer bugs, so it re-derives every rule from the format document.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
import weakref
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final, TypeAlias, TypeVar, overload

import blake3
import fastcrc
import lz4.block
import zstandard

from acceld.formats.driver import FormatError

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """A sequence whose items are read or decoded on access (tables of a million entries):
    subclasses give its length and `_item` for an index in range."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _item(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._item(index)


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
MAX_BOOTSTRAP_SIZE: Final = 1 << 30  # refuse to inflate a larger image.boot (untrusted input)
_SPOOL_PIECE: Final = 1 << 20
_ZSTD_STEP: Final = 512
_COMPARE_PIECE: Final = 16 << 20

# Bootstraps are read through a file mapping (a 1 M-file bootstrap is ~200 MB) or, for small inputs
# and tests, from bytes: both slice to bytes and work with struct.unpack_from.
Mapped: TypeAlias = bytes | mmap.mmap
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap  # what the u16/u32/u64 readers take

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


def u8(buf: Buffer, off: int) -> int:
    return buf[off]


def u16(buf: Buffer, off: int) -> int:
    value: int = struct.unpack_from("<H", buf, off)[0]
    return value


def u32(buf: Buffer, off: int) -> int:
    value: int = struct.unpack_from("<I", buf, off)[0]
    return value


def u64(buf: Buffer, off: int) -> int:
    value: int = struct.unpack_from("<Q", buf, off)[0]
    return value


class MappedFile(mmap.mmap):
    """A read-only file mapping that keeps a descriptor for `read_at`: a random small read through a
    mapping faults in ~16 pages around it (kernel fault-around) that stay until released."""

    fd: int


def map_file(handle: BinaryIO) -> Mapped:
    """A read-only mapping of an open file (bytes when empty: an empty file cannot be mapped)."""
    handle.seek(0, 2)
    if handle.tell() == 0:
        return b""
    mapped = MappedFile(handle.fileno(), 0, access=mmap.ACCESS_READ)
    mapped.fd = os.dup(handle.fileno())
    weakref.finalize(mapped, os.close, mapped.fd)
    return mapped


def read_at(data: Mapped, offset: int, size: int) -> bytes:
    """`size` bytes at `offset`, read with pread from a mapped file (no page of it is mapped in)."""
    if isinstance(data, MappedFile):
        return os.pread(data.fd, size, offset)
    return data[offset : offset + size]


def map_path(path: Path) -> Mapped:
    with path.open("rb") as handle:
        return map_file(handle)


def release_pages(data: Buffer) -> None:
    """Drop the pages of a mapping from this process (they stay in the page cache): bounded RSS."""
    target = data.obj if isinstance(data, memoryview) else data
    if isinstance(target, mmap.mmap) and not target.closed:
        target.madvise(mmap.MADV_DONTNEED)


def same_bytes(a: Buffer, b: Buffer) -> bool:
    """Equal content, compared a piece at a time (mapped pages are dropped as they are read)."""
    if len(a) != len(b):
        return False
    left, right = memoryview(a), memoryview(b)
    for start in range(0, len(left), _COMPARE_PIECE):
        if left[start : start + _COMPARE_PIECE] != right[start : start + _COMPARE_PIECE]:
            return False
        release_pages(a)
        release_pages(b)
    return True


def spool_file(workdir: Path | None = None) -> BinaryIO:
    """An anonymous temp file (0600, gone when closed or when the process dies) for spooled metadata."""
    return tempfile.TemporaryFile(dir=workdir)


def decompress_to_map(
    algo: int, source: BinaryIO, compressed_size: int, size: int, what: str, workdir: Path | None = None
) -> Mapped:
    """`decompress` of the next `compressed_size` bytes of `source`, into a mapped temp file.

    none and zstd are streamed (zstd never produces more than `size` bytes plus one step's output);
    lz4_block has no streaming form and is decompressed in memory.
    """
    if algo not in (COMPRESSOR_NONE, COMPRESSOR_ZSTD):
        return decompress(algo, _read_exact(source, compressed_size, what), size, what)
    with spool_file(workdir) as out:
        if algo == COMPRESSOR_ZSTD:
            _zstd_stream(source, compressed_size, size, out, what)
        else:
            for piece in _pieces(source, compressed_size, what):
                out.write(piece)
            if compressed_size != size:
                raise BlobError(f"{what}: decompressed to {compressed_size} bytes, expected {size}")
        return map_file(out)


def _read_exact(source: BinaryIO, count: int, what: str) -> bytes:
    data = source.read(count)
    if len(data) != count:
        raise BlobError(f"{what}: short read ({len(data)} of {count} bytes)")
    return data


def _pieces(source: BinaryIO, count: int, what: str) -> Iterator[bytes]:
    while count:
        piece = _read_exact(source, min(count, _SPOOL_PIECE), what)
        count -= len(piece)
        yield piece


def _zstd_stream(source: BinaryIO, compressed_size: int, size: int, out: BinaryIO, what: str) -> None:
    """`_zstd_exact` for a frame read from `source` and written to `out` piece by piece.

    The input goes in small steps so that one step can never inflate far (a block holds <= 128 KiB).
    """
    decoder = zstandard.ZstdDecompressor().decompressobj()
    written, unused, first = 0, 0, True
    try:
        for piece in _pieces(source, compressed_size, what):
            if first:
                declared = zstandard.get_frame_parameters(piece).content_size
                if declared not in (zstandard.CONTENTSIZE_UNKNOWN, size):
                    raise BlobError(f"{what}: zstd frame holds {declared} bytes, expected {size}")
                first = False
            view = memoryview(piece)
            for start in range(0, len(view), _ZSTD_STEP):
                if decoder.eof:
                    unused += len(view) - start
                    break
                produced = decoder.decompress(view[start : start + _ZSTD_STEP])
                written += len(produced)
                if written > size:
                    raise BlobError(f"{what}: zstd frame holds more than {size} bytes, expected {size}")
                out.write(produced)
    except zstandard.ZstdError as exc:
        raise BlobError(f"{what}: zstd data does not decompress ({exc})") from exc
    if not decoder.eof:
        raise BlobError(f"{what}: zstd frame is truncated")
    unused += len(decoder.unused_data)
    if unused:
        raise BlobError(f"{what}: {unused} trailing bytes after the zstd frame")
    if written != size:
        raise BlobError(f"{what}: decompressed to {written} bytes, expected {size}")


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
