"""Read and verify a Nydus blob layer: "data | tar header" parts, TOC, blob meta, chunk data.

A blob is walked backwards from its end (each 512-byte tar header follows its data), the TOC
entries are checked against the parts found, the blob-meta header and chunk-info array are
decoded, and every chunk can be decompressed and checked against its digest. Violations raise
`BlobError` naming the part, offset and expected versus found value.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from acceld.formats.nydus.reader_bootstrap import (
    CHUNK_HAS_CRC32,
    BlobEntry,
    ChunkRecord,
    RafsBootstrap,
    parse_bootstrap,
)
from acceld.formats.nydus.reader_common import (
    BLOCK_SIZE,
    COMPRESSOR_GZIP,
    COMPRESSOR_LZ4_BLOCK,
    COMPRESSOR_NONE,
    COMPRESSOR_ZSTD,
    FEATURE_BATCH,
    FEATURE_CHUNK_INFO_V2,
    FEATURE_ENCRYPTED,
    FEATURE_HAS_TOC,
    FEATURE_INLINED_CHUNK_DIGEST,
    FEATURE_INLINED_FS_META,
    FEATURE_SEPARATE,
    FEATURE_ZRAN,
    MAX_BOOTSTRAP_SIZE,
    TAR_HEADER_SIZE,
    BlobError,
    Buffer,
    LazySequence,
    Mapped,
    UnsupportedNydusError,
    align,
    chunk_digest,
    crc32c,
    cstring,
    decompress,
    decompress_to_map,
    parse_tar_header,
    release_pages,
    u32,
    u64,
)
from acceld.formats.nydus.reader_zran import (
    GzipLayer,
    ZranContext,
    check_zran_chunk,
    parse_zran_tables,
    zran_position,
)

BLOB_META_MAGIC: Final = 0xB10BB10B
BLOB_META_HEADER_SIZE: Final = 4096
TOC_ENTRY_SIZE: Final = 128
DIGEST_SIZE: Final = 32
CI_HAS_CRC32: Final = 0x10
PLACEHOLDER_BLOB_ID: Final = "x" * 64
_READ_SIZE: Final = 1 << 20
_HASH_PIECE: Final = 16 << 20
_RELEASE_EVERY: Final = 1 << 12  # CI entries decoded between drops of a mapped CI array's pages

IMAGE_BLOB, BLOB_META, BLOB_META_HEADER = "image.blob", "blob.meta", "blob.meta.header"
BLOB_DIGEST, IMAGE_BOOT, BLOB_TOC = "blob.digest", "image.boot", "rafs.blob.toc"
PART_ORDER: Final = (IMAGE_BLOB, BLOB_META, BLOB_DIGEST, IMAGE_BOOT, BLOB_TOC)
TOC_NAMES: Final = (IMAGE_BLOB, BLOB_META, BLOB_META_HEADER, BLOB_DIGEST, IMAGE_BOOT)
TOC_COMPRESSORS: Final = {0x1: COMPRESSOR_NONE, 0x2: COMPRESSOR_ZSTD, 0x4: COMPRESSOR_LZ4_BLOCK}


@dataclass(frozen=True)
class Part:
    """One "data | tar header" part of the blob stream."""

    name: str
    offset: int  # of the data
    size: int  # data bytes (the tar header's size field)


@dataclass(frozen=True)
class TocEntry:
    name: str
    compressor: int
    digest: bytes
    offset: int
    compressed_size: int
    uncompressed_size: int


@dataclass(frozen=True)
class BlobMetaHeader:
    """The 4096-byte `BlobCompressionContextHeader`."""

    features: int
    ci_compressor: int
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    zran_offset: int
    zran_size: int
    zran_count: int


@dataclass(slots=True)
class ChunkInfo:
    """One chunk-info (CI) entry of the blob meta, v1 or v2, decoded (not frozen: made per chunk read)."""

    index: int
    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int
    compressed: bool
    flags: int = 0  # CI v2 flags
    data: int = 0  # CI v2 data word (crc32, zran or batch position)


@dataclass
class BlobReport:
    """What `verify_blob` established about one blob."""

    sha256: str
    size: int
    parts: list[Part]
    toc: list[TocEntry]
    header: BlobMetaHeader | None
    chunks: Sequence[ChunkInfo]
    chunk_digests: Sequence[bytes] = field(default_factory=list)  # computed from the data, CI order
    bootstrap: Mapped | None = None  # the inline image.boot, uncompressed (mapped)


def parse_blob_meta_header(raw: bytes, where: str) -> BlobMetaHeader:
    if len(raw) != BLOB_META_HEADER_SIZE:
        raise BlobError(f"{where}: blob-meta header is {len(raw)} bytes, expected 4096")
    for off in (0, 4092):
        magic = u32(raw, off)
        if magic != BLOB_META_MAGIC:
            raise BlobError(
                f"{where}: blob-meta header magic at byte {off} is {magic:#010x}, expected 0xb10bb10b"
            )
    if any(raw[60:4092]):
        raise BlobError(f"{where}: blob-meta header reserved bytes 60..4092 are not 0")
    return BlobMetaHeader(
        features=u32(raw, 4),
        ci_compressor=u32(raw, 8),
        ci_entries=u32(raw, 12),
        ci_offset=u64(raw, 16),
        ci_compressed_size=u64(raw, 24),
        ci_uncompressed_size=u64(raw, 32),
        zran_offset=u64(raw, 40),
        zran_size=u64(raw, 48),
        zran_count=u32(raw, 56),
    )


class ChunkInfos(LazySequence[ChunkInfo]):
    """The CI array, decoded entry by entry on access: a blob may have a million chunks."""

    def __init__(self, raw: Buffer, v2: bool, count: int, where: str) -> None:
        self.raw, self.v2, self.entries, self.where = raw, v2, count, where
        self.decoded = 0

    def __len__(self) -> int:
        return self.entries

    def _item(self, index: int) -> ChunkInfo:
        self.decoded += 1
        if self.decoded % _RELEASE_EVERY == 0:
            release_pages(self.raw)
        return (_decode_ci_v2 if self.v2 else _decode_ci_v1)(self.raw, index, self.where)


class BlobDigests(LazySequence[bytes]):
    """The blob.digest array, read from the blob file on access (32 MB for a million chunks)."""

    def __init__(self, blob: NydusBlob, offset: int, entries: int) -> None:
        self.blob, self.offset, self.entries = blob, offset, entries

    def __len__(self) -> int:
        return self.entries

    def _item(self, index: int) -> bytes:
        return self.blob._read(self.offset + index * DIGEST_SIZE, DIGEST_SIZE)


class Digests(LazySequence[bytes]):
    """Digests computed while verifying, sliced on access."""

    def __init__(self, raw: Buffer) -> None:
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw) // DIGEST_SIZE

    def _item(self, index: int) -> bytes:
        return bytes(self.raw[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE])


def parse_chunk_infos(raw: Buffer, header: BlobMetaHeader, where: str) -> ChunkInfos:
    """Decode the uncompressed CI array; entries must be sorted by 4K-aligned, non-overlapping uoff."""
    v2 = bool(header.features & FEATURE_CHUNK_INFO_V2)
    width = 24 if v2 else 16
    count = header.ci_entries
    if len(raw) < count * width:
        raise BlobError(
            f"{where}: CI array is {len(raw)} bytes, {count} "
            f"{'v2' if v2 else 'v1'} entries need {count * width}"
        )
    if not header.features & (FEATURE_ZRAN | FEATURE_BATCH) and len(raw) != count * width:
        raise BlobError(f"{where}: CI array is {len(raw)} bytes, expected {count} x {width}")
    infos = ChunkInfos(raw, v2, count, where)
    previous_end = 0
    for info in infos:
        if info.uncompressed_offset % BLOCK_SIZE:
            raise BlobError(
                f"{where}: CI entry {info.index} uncompressed offset "
                f"{info.uncompressed_offset:#x} is not 4K-aligned"
            )
        if info.uncompressed_offset < previous_end:
            raise BlobError(
                f"{where}: CI entry {info.index} uncompressed offset "
                f"{info.uncompressed_offset:#x} is below the end "
                f"{previous_end:#x} of the previous entry (entries must be sorted and not overlap)"
            )
        previous_end = info.uncompressed_offset + info.uncompressed_size
    return infos


def _decode_ci_v1(raw: Buffer, i: int, where: str) -> ChunkInfo:
    uncomp, comp = u64(raw, 16 * i), u64(raw, 16 * i + 8)
    if uncomp & 0xFF:
        raise BlobError(f"{where}: CI v1 entry {i} has non-zero reserved bits 0..7 ({uncomp & 0xFF:#x})")
    usize = (((uncomp >> 8) & 0xF) << 20 | (uncomp >> 44)) + 1
    csize = (((comp >> 40) & 0xF) << 20 | (comp >> 44)) + 1
    return ChunkInfo(
        index=i,
        uncompressed_offset=uncomp & 0xFFF_FFFF_F000,
        uncompressed_size=usize,
        compressed_offset=comp & 0xFF_FFFF_FFFF,
        compressed_size=csize,
        compressed=csize != usize,
    )


def _decode_ci_v2(raw: Buffer, i: int, where: str) -> ChunkInfo:
    uncomp, comp, data = u64(raw, 24 * i), u64(raw, 24 * i + 8), u64(raw, 24 * i + 16)
    flags = uncomp >> 56
    if flags & ~0x1F:
        raise BlobError(f"{where}: CI v2 entry {i} has unknown flags {flags:#x}")
    return ChunkInfo(
        index=i,
        uncompressed_offset=(uncomp & 0xFFFF_FFFF) << 12,
        uncompressed_size=((uncomp >> 32) & 0xFF_FFFF) + 1,
        compressed_offset=comp & 0xFF_FFFF_FFFF,
        compressed_size=comp >> 40,
        compressed=bool(flags & 0x1),
        flags=flags,
        data=data,
    )


def parse_blob_meta_file(
    data: Buffer, where: str = "blob.meta file"
) -> tuple[BlobMetaHeader, Buffer, Sequence[ChunkInfo]]:
    """A `<blob-id>.blob.meta` cache file: uncompressed CI data, zero padding to 4K, then the header."""
    if len(data) < BLOB_META_HEADER_SIZE or len(data) % BLOCK_SIZE:
        raise BlobError(f"{where}: size {len(data)} is not a positive multiple of 4096")
    header = parse_blob_meta_header(bytes(data[len(data) - BLOB_META_HEADER_SIZE :]), where)
    expected = align(header.ci_uncompressed_size, BLOCK_SIZE) + BLOB_META_HEADER_SIZE
    if len(data) != expected:
        raise BlobError(
            f"{where}: size {len(data)}, expected align(ci_uncompressed_size "
            f"{header.ci_uncompressed_size}, 4096) "
            f"+ 4096 = {expected}"
        )
    ci = memoryview(data)[: header.ci_uncompressed_size]  # a view: a CI array may be tens of MB
    if any(data[header.ci_uncompressed_size : len(data) - BLOB_META_HEADER_SIZE]):
        raise BlobError(f"{where}: padding between the CI data and the header is not zero")
    return header, ci, parse_chunk_infos(ci, header, where)


class NydusBlob:
    """A Nydus blob layer file: its parts, TOC and blob meta, read lazily from a seekable file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.where = f"blob {self.path.name}"
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise BlobError(f"{self.where}: cannot open ({exc.strerror})") from exc
        weakref.finalize(self, os.close, self.fd)
        self.size = os.fstat(self.fd).st_size
        self.parts = self._walk_parts()
        self.toc = self._read_toc()
        self.header, self.ci_raw, self.chunks = self._read_blob_meta()
        self.chunk_data_size = self.parts_by_name[IMAGE_BLOB].size if IMAGE_BLOB in self.parts_by_name else 0
        self.digests = self._read_digest_array()
        self.contexts: list[ZranContext] = []
        self.gzip: GzipLayer | None = None  # the layer a zran blob's chunks live in, see attach_gzip
        if self.header is not None and self.header.features & FEATURE_ZRAN:
            self.contexts = self._read_zran_tables(self.header)

    @property
    def is_zran(self) -> bool:
        return self.header is not None and bool(self.header.features & FEATURE_ZRAN)

    def attach_gzip(self, path: Path) -> None:
        """Name the gzip layer a zran (OCI-ref) blob's chunks are read from."""
        self.gzip = GzipLayer(Path(path), self.contexts, f"{self.where} gzip layer {Path(path).name}")

    def _read_zran_tables(self, header: BlobMetaHeader) -> list[ZranContext]:
        where = f"{self.where} blob.meta"
        if not header.features & FEATURE_CHUNK_INFO_V2:
            raise BlobError(f"{where}: ZRAN without CHUNK_INFO_V2 (features {header.features:#x})")
        if IMAGE_BLOB in self.parts_by_name:
            raise BlobError(f"{where}: a zran blob keeps its chunk data in the gzip layer, not in image.blob")
        contexts = parse_zran_tables(
            self.ci_raw, header.ci_entries, header.zran_offset, header.zran_size, header.zran_count, where
        )
        for info in self.chunks:
            check_zran_chunk(info.index, info.flags, info.data, info.uncompressed_size, contexts, where)
        return contexts

    # -- structure ------------------------------------------------------------------------

    def _read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > self.size:
            raise BlobError(
                f"{self.where}: read of {size} bytes at {offset} is outside the {self.size}-byte blob"
            )
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise BlobError(f"{self.where}: short read at {offset}")
        return data

    def _walk_parts(self) -> list[Part]:
        parts: list[Part] = []
        pos = self.size
        with open(self.path, "rb") as handle:
            while pos > 0:
                if pos < TAR_HEADER_SIZE:
                    raise BlobError(f"{self.where}: {pos} stray bytes at the start, before the first part")
                handle.seek(pos - TAR_HEADER_SIZE)
                name, size = parse_tar_header(
                    handle.read(TAR_HEADER_SIZE), f"{self.where} tar header at {pos - 512}"
                )
                start = pos - TAR_HEADER_SIZE - size
                if start < 0:
                    raise BlobError(
                        f"{self.where}: part {name!r} claims {size} bytes, more than precede its header"
                    )
                parts.append(Part(name=name, offset=start, size=size))
                pos = start
        parts.reverse()
        names = [part.name for part in parts]
        unknown = [name for name in names if name not in PART_ORDER]
        if unknown:
            raise BlobError(f"{self.where}: unknown part {unknown[0]!r} (expected {', '.join(PART_ORDER)})")
        if len(set(names)) != len(names) or names != sorted(names, key=PART_ORDER.index):
            raise BlobError(
                f"{self.where}: parts {names} are repeated or out of the order {list(PART_ORDER)}"
            )
        if not names:
            raise BlobError(f"{self.where}: empty blob")
        self.parts_by_name = {part.name: part for part in parts}
        return parts

    def _read_toc(self) -> list[TocEntry]:
        part = self.parts_by_name.get(BLOB_TOC)
        if part is None:
            return []
        if part.size % TOC_ENTRY_SIZE:
            raise BlobError(f"{self.where}: TOC is {part.size} bytes, not a multiple of 128")
        raw = self._read(part.offset, part.size)
        entries = []
        for i in range(part.size // TOC_ENTRY_SIZE):
            entries.append(self._toc_entry(raw[i * TOC_ENTRY_SIZE : (i + 1) * TOC_ENTRY_SIZE], i))
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names):
            raise BlobError(f"{self.where}: TOC names repeat: {names}")
        self._check_toc_against_parts(entries)
        return entries

    def _toc_entry(self, raw: bytes, i: int) -> TocEntry:
        where = f"{self.where} TOC entry {i}"
        flags = u32(raw, 0)
        if flags not in TOC_COMPRESSORS:
            raise BlobError(f"{where}: flags {flags:#x}, expected 0x1 (none), 0x2 (zstd) or 0x4 (lz4_block)")
        if u32(raw, 4):
            raise BlobError(f"{where}: reserved1 is {u32(raw, 4):#x}, expected 0")
        name = cstring(raw[8:24]).decode("ascii", "replace")
        if name not in TOC_NAMES:
            raise BlobError(f"{where}: unknown name {name!r}")
        if any(raw[8 + len(name) : 24]):
            raise BlobError(f"{where} ({name}): the name is not NUL-padded")
        # reserved2 is bytes 80..128; pre-2023 builders left garbage in its last 4 bytes only.
        if any(raw[80:124]):
            raise BlobError(f"{where} ({name}): reserved2 bytes 80..124 are not 0")
        entry = TocEntry(
            name=name,
            compressor=TOC_COMPRESSORS[flags],
            digest=bytes(raw[24:56]),
            offset=u64(raw, 56),
            compressed_size=u64(raw, 64),
            uncompressed_size=u64(raw, 72),
        )
        legacy_offset = name == IMAGE_BLOB and entry.offset == entry.compressed_size
        if entry.offset + entry.compressed_size > self.size and not legacy_offset:
            raise BlobError(
                f"{where} ({name}): range {entry.offset}+{entry.compressed_size} is outside the blob"
            )
        return entry

    def _check_toc_against_parts(self, entries: list[TocEntry]) -> None:
        by_name = {entry.name: entry for entry in entries}
        for part in self.parts:
            if part.name != BLOB_TOC and part.name not in by_name:
                raise BlobError(f"{self.where}: part {part.name} has no TOC entry")
        for entry in entries:
            where = f"{self.where} TOC entry {entry.name}"
            if entry.name != BLOB_META_HEADER and entry.name not in self.parts_by_name:
                raise BlobError(f"{where}: the blob has no {entry.name} part")
            if (
                entry.name in (IMAGE_BLOB, BLOB_META_HEADER, BLOB_DIGEST)
                and entry.compressor != COMPRESSOR_NONE
            ):
                raise BlobError(f"{where}: compressor must be none")
            found = (entry.offset, entry.compressed_size)
            if entry.name == BLOB_META_HEADER:
                meta = by_name.get(BLOB_META)
                if meta is None:
                    raise BlobError(f"{where}: no blob.meta entry")
                expected = (meta.offset + meta.compressed_size, BLOB_META_HEADER_SIZE)
            else:
                part = self.parts_by_name[entry.name]
                size = part.size - BLOB_META_HEADER_SIZE if entry.name == BLOB_META else part.size
                expected = (part.offset, size)
                if entry.name == IMAGE_BLOB and found == (size, size):
                    expected = found  # pre-2023 builders wrote the size as the offset
            if found != expected:
                raise BlobError(f"{where}: offset/size {found}, expected {expected} from the tar parts")
            raw_sizes_differ = entry.uncompressed_size != entry.compressed_size
            if entry.compressor == COMPRESSOR_NONE and entry.name != IMAGE_BLOB and raw_sizes_differ:
                raise BlobError(
                    f"{where}: uncompressed size {entry.uncompressed_size} != compressed size "
                    f"{entry.compressed_size} without compression"
                )

    def _read_blob_meta(self) -> tuple[BlobMetaHeader | None, Mapped, Sequence[ChunkInfo]]:
        part = self.parts_by_name.get(BLOB_META)
        if part is None:
            return None, b"", []
        where = f"{self.where} blob.meta"
        if part.size < BLOB_META_HEADER_SIZE:
            raise BlobError(f"{where}: part is {part.size} bytes, smaller than the 4096-byte header")
        header = parse_blob_meta_header(
            self._read(part.offset + part.size - BLOB_META_HEADER_SIZE, BLOB_META_HEADER_SIZE), where
        )
        ci_size = part.size - BLOB_META_HEADER_SIZE
        if (header.ci_offset, header.ci_compressed_size) != (part.offset, ci_size):
            raise BlobError(
                f"{where}: header ci_offset/ci_compressed_size "
                f"{header.ci_offset}/{header.ci_compressed_size}, "
                f"the header must follow the CI data at {part.offset}/{ci_size}"
            )
        if header.ci_compressed_size > header.ci_uncompressed_size:
            raise BlobError(
                f"{where}: ci_compressed_size {ci_size} exceeds "
                f"ci_uncompressed_size {header.ci_uncompressed_size}"
            )
        if header.features & FEATURE_ENCRYPTED:
            raise UnsupportedNydusError(f"{where}: encrypted blob meta is not supported")
        toc = {entry.name: entry for entry in self.toc}
        if BLOB_META in toc and toc[BLOB_META].compressor != header.ci_compressor:
            raise BlobError(
                f"{where}: TOC compressor {toc[BLOB_META].compressor} "
                f"!= header ci_compressor {header.ci_compressor}"
            )
        if BLOB_META in toc and toc[BLOB_META].uncompressed_size != header.ci_uncompressed_size:
            raise BlobError(f"{where}: TOC uncompressed size != header ci_uncompressed_size")
        width = 24 if header.features & FEATURE_CHUNK_INFO_V2 else 16
        exact = not header.features & (FEATURE_ZRAN | FEATURE_BATCH)
        if header.ci_uncompressed_size < header.ci_entries * width or (
            exact and header.ci_uncompressed_size != header.ci_entries * width
        ):
            raise BlobError(
                f"{where}: ci_uncompressed_size {header.ci_uncompressed_size} does not fit "
                f"{header.ci_entries} CI entries of {width} bytes"
            )
        if header.ci_compressor == COMPRESSOR_NONE and ci_size != header.ci_uncompressed_size:
            raise BlobError(
                f"{where}: uncompressed CI is {ci_size} bytes, header says {header.ci_uncompressed_size}"
            )
        # a million chunks make a CI array of 16-24 MB: it goes to a mapped temp file
        with open(self.path, "rb") as handle:
            handle.seek(part.offset)
            raw = decompress_to_map(
                header.ci_compressor, handle, ci_size, header.ci_uncompressed_size, f"{where} CI array"
            )
        return header, raw, parse_chunk_infos(raw, header, where)

    def _read_digest_array(self) -> Sequence[bytes]:
        part = self.parts_by_name.get(BLOB_DIGEST)
        if part is None:
            return []
        count = len(self.chunks)
        if part.size != DIGEST_SIZE * count:
            raise BlobError(
                f"{self.where}: blob.digest is {part.size} bytes, expected 32 x {count} CI entries"
            )
        return BlobDigests(self, part.offset, count)

    def sha256_of(self, offset: int, size: int) -> bytes:
        """sha256 of a range of the blob file, read a piece at a time."""
        sha = hashlib.sha256()
        for start in range(offset, offset + size, _READ_SIZE):
            sha.update(self._read(start, min(_READ_SIZE, offset + size - start)))
        return sha.digest()

    def inline_bootstrap(self, workdir: Path | None = None) -> Mapped | None:
        """The uncompressed per-layer bootstrap (`image.boot`) in a mapped temp file, or None."""
        part = self.parts_by_name.get(IMAGE_BOOT)
        if part is None:
            return None
        entry = next((e for e in self.toc if e.name == IMAGE_BOOT), None)
        # the pre-TOC format stores it uncompressed
        compressor, size = (
            (COMPRESSOR_NONE, part.size) if entry is None else (entry.compressor, entry.uncompressed_size)
        )
        if size > MAX_BOOTSTRAP_SIZE:
            raise BlobError(f"{self.where}: image.boot claims {size} bytes, above 1 GiB")
        with open(self.path, "rb") as handle:
            handle.seek(part.offset)
            return decompress_to_map(compressor, handle, part.size, size, f"{self.where} image.boot", workdir)

    # -- chunks ---------------------------------------------------------------------------

    def chunk(self, ci_index: int) -> ChunkInfo:
        if not 0 <= ci_index < len(self.chunks):
            raise BlobError(f"{self.where}: CI index {ci_index} is outside the {len(self.chunks)} CI entries")
        return self.chunks[ci_index]

    def read_chunk(self, ci_index: int, compressor: int, handle: BinaryIO | None = None) -> bytes:
        """Decompressed data of one chunk (checks its placement and size, not its digest)."""
        return self.read_chunk_of(self.chunk(ci_index), compressor, handle)

    def read_chunk_of(self, info: ChunkInfo, compressor: int, handle: BinaryIO | None = None) -> bytes:
        """`read_chunk` of a CI entry already decoded."""
        ci_index = info.index
        where = f"{self.where} chunk {ci_index}"
        if self.is_zran:
            return self._read_zran_chunk(info, where)
        if info.flags & ~0x11:
            raise UnsupportedNydusError(
                f"{where}: zran, batch or encrypted chunks (CI flags {info.flags:#x}) are not supported"
            )
        if info.compressed_offset + info.compressed_size > self.chunk_data_size:
            raise BlobError(
                f"{where}: compressed range {info.compressed_offset}+{info.compressed_size} is outside the "
                f"{self.chunk_data_size}-byte chunk data"
            )
        if handle is None:
            raw = self._read(info.compressed_offset, info.compressed_size)
        else:
            handle.seek(info.compressed_offset)
            raw = handle.read(info.compressed_size)
        if not info.compressed:
            if info.compressed_size != info.uncompressed_size:
                raise BlobError(
                    f"{where}: stored raw but compressed size "
                    f"{info.compressed_size} != {info.uncompressed_size}"
                )
            return raw
        if compressor == COMPRESSOR_NONE:
            raise BlobError(f"{where}: marked compressed in a blob whose compressor is none")
        return decompress(compressor, raw, info.uncompressed_size, where)

    def _read_zran_chunk(self, info: ChunkInfo, where: str) -> bytes:
        if self.gzip is None:
            raise BlobError(f"{where}: zran chunk, but the gzip layer it refers to was not provided")
        index, offset = zran_position(info.data)
        return self.gzip.context_output(index)[offset : offset + info.uncompressed_size]


def select_blob_entry(bootstrap: RafsBootstrap, blob: NydusBlob) -> BlobEntry | None:
    """The entry of a per-layer bootstrap that describes the blob it is inlined in.

    None when the blob carries no chunk data (a metadata-only layer has no blob-table entry of its
    own). Current builders write the placeholder id "x"*64; nydusd takes the real id from the file
    name; the 2023 fixture has a single entry with a stale id.
    """
    if BLOB_META not in blob.parts_by_name:
        return None
    name = blob.path.name
    candidates = [b for b in bootstrap.blobs if b.blob_id in (name, PLACEHOLDER_BLOB_ID)]
    if blob.is_zran:  # a ref blob's entry is named after the gzip layer it indexes
        candidates = [b for b in bootstrap.blobs if b.features & FEATURE_ZRAN]
    if not candidates and len(bootstrap.blobs) == 1:
        candidates = list(bootstrap.blobs)
    if len(candidates) != 1:
        raise BlobError(
            f"blob {name}: cannot tell which of the {len(bootstrap.blobs)} blob-table entries of its inline "
            "bootstrap describes it (expected one with id 'x'*64, its file name, or a single entry)"
        )
    return candidates[0]


def verify_blob(
    path: Path | str,
    entry: BlobEntry | None = None,
    *,
    chunk_records: Mapping[int, ChunkRecord] | None = None,
    gzip: Path | str | None = None,
) -> BlobReport:
    """Check a blob layer end to end and return what it contains.

    `entry` is the blob's blob-table entry from a bootstrap; without it the blob's own inline
    bootstrap (`image.boot`) supplies it. `chunk_records` maps CI indexes to the chunk-table
    entries of this blob (digest, CRC). Checks: part layout and tar headers, TOC entries and every TOC digest,
    the blob-meta header against the entry, CI ordering and placement, `blob.digest`, and every
    chunk's decompressed size and digest. A zran (OCI-ref) blob reads its chunks from the `gzip`
    layer, whose contexts are also compared with a straight decompression of that layer.
    """
    blob = NydusBlob(path)
    if gzip is not None:
        blob.attach_gzip(Path(gzip))
        assert blob.gzip is not None
        blob.gzip.check_contexts_against_stream()
    bootstrap_raw = blob.inline_bootstrap()
    inline = parse_bootstrap(bootstrap_raw) if bootstrap_raw is not None else None
    own = select_blob_entry(inline, blob) if inline is not None else None
    inline_records: Mapping[int, ChunkRecord] = {}
    if inline is not None and own is not None:
        inline_records = inline.chunk_table.of_blob(own.index)
    if entry is None:
        if inline is None:
            raise BlobError(f"{blob.where}: no inline bootstrap; pass the blob-table entry that describes it")
        entry = own
        if chunk_records is None:
            chunk_records = inline_records
    digests: Sequence[bytes] = []
    if entry is not None:
        _check_entry(blob, entry)
        digests = _check_chunks(blob, entry, chunk_records or {})
    if own is not None and own is not entry:
        # the per-layer bootstrap inside must describe this blob as well as the given entry does
        _check_entry(blob, own)
        for rec in inline_records.values():
            if rec.ci_index < len(digests) and digests[rec.ci_index] != rec.digest:
                raise BlobError(
                    f"{blob.where}: inline image.boot chunk table digest of CI index {rec.ci_index} "
                    f"{rec.digest.hex()} != the chunk's digest {digests[rec.ci_index].hex()}"
                )
    sha256 = _check_toc_digests(blob, bootstrap_raw, entry)
    return BlobReport(
        sha256=sha256,
        size=blob.size,
        parts=blob.parts,
        toc=blob.toc,
        header=blob.header,
        chunks=blob.chunks,
        chunk_digests=digests,
        bootstrap=bootstrap_raw,
    )


def _check_entry(blob: NydusBlob, entry: BlobEntry) -> None:
    where = f"{blob.where} vs blob table entry {entry.index}"
    header = blob.header
    if header is None:
        if entry.chunk_count:
            raise BlobError(
                f"{where}: the entry lists {entry.chunk_count} chunks but the blob has no blob.meta"
            )
        return
    if bool(entry.features & FEATURE_ZRAN) != blob.is_zran:
        raise BlobError(f"{where}: ZRAN feature differs between the blob table and the blob-meta header")
    pairs = {
        "chunk_count / ci_entries": (entry.chunk_count, header.ci_entries),
        "ci_compressor": (entry.ci_compressor, header.ci_compressor),
        "ci_offset": (entry.ci_offset, header.ci_offset),
        "ci_compressed_size": (entry.ci_compressed_size, header.ci_compressed_size),
        "ci_uncompressed_size": (entry.ci_uncompressed_size, header.ci_uncompressed_size),
    }
    for name, (mine, theirs) in pairs.items():
        if mine != theirs:
            raise BlobError(
                f"{where}: {name} is {mine} in the bootstrap but {theirs} in the blob-meta header"
            )
    if entry.features not in (header.features, header.features & ~FEATURE_INLINED_FS_META):
        raise BlobError(
            f"{where}: features {entry.features:#x} differ from the blob-meta header's {header.features:#x} "
            "(only INLINED_FS_META may be dropped)"
        )
    if entry.features & FEATURE_HAS_TOC and not blob.toc:
        raise BlobError(f"{where}: features have HAS_TOC but the blob has no rafs.blob.toc part")
    if entry.features & FEATURE_INLINED_CHUNK_DIGEST and not blob.digests and blob.chunks:
        raise BlobError(f"{where}: features have INLINED_CHUNK_DIGEST but the blob has no blob.digest part")
    chunk_end = max((c.uncompressed_offset + c.uncompressed_size for c in blob.chunks), default=0)
    if entry.uncompressed_size != align(chunk_end, BLOCK_SIZE):
        raise BlobError(
            f"{where}: uncompressed_size {entry.uncompressed_size}, expected the 4K-aligned end of the last "
            f"chunk {align(chunk_end, BLOCK_SIZE)}"
        )
    toc = {e.name: e for e in blob.toc}
    if IMAGE_BLOB in toc and toc[IMAGE_BLOB].uncompressed_size != entry.uncompressed_size:
        raise BlobError(
            f"{where}: TOC image.blob uncompressed size "
            f"{toc[IMAGE_BLOB].uncompressed_size} != {entry.uncompressed_size}"
        )
    if blob.is_zran:
        _check_zran_entry(blob, entry, where)
        return
    # Current builders record the bytes before image.boot; 2023 builders the chunk data size.
    boot = blob.parts_by_name.get(IMAGE_BOOT)
    allowed_csize = {boot.offset if boot is not None else blob.size, blob.chunk_data_size}
    if entry.compressed_size not in allowed_csize:
        raise BlobError(
            f"{where}: compressed_size {entry.compressed_size}, expected {max(allowed_csize)} "
            "(the blob bytes before image.boot)"
        )
    if entry.toc_size and entry.toc_size != TOC_ENTRY_SIZE * len(blob.toc) + TAR_HEADER_SIZE:
        raise BlobError(f"{where}: blob_toc_size {entry.toc_size}, expected 128 x {len(blob.toc)} + 512")


def _check_zran_entry(blob: NydusBlob, entry: BlobEntry, where: str) -> None:
    """A zran entry names the gzip layer (id, size) and, once merged, its ref blob (meta digest, size)."""
    if entry.compressor != COMPRESSOR_GZIP:
        raise BlobError(f"{where}: compression_algo {entry.compressor}, a zran blob's chunks are gzip (2)")
    if not entry.features & FEATURE_SEPARATE:
        raise BlobError(f"{where}: features {entry.features:#x} lack SEPARATE (0x10)")
    if blob.gzip is not None and entry.compressed_size != blob.gzip.size:
        raise BlobError(
            f"{where}: compressed_size {entry.compressed_size} != gzip layer size {blob.gzip.size}"
        )
    if blob.gzip is not None:
        for ctx in blob.contexts:
            if ctx.in_offset + ctx.in_len > blob.gzip.size:
                raise BlobError(f"{where}: zran context {ctx.index} ends past the gzip layer")
    if any(entry.meta_digest) or entry.meta_size:
        if entry.meta_size != blob.size:
            raise BlobError(f"{where}: blob_meta_size {entry.meta_size} != ref blob size {blob.size}")
        if entry.toc_size and entry.toc_size != TOC_ENTRY_SIZE * len(blob.toc) + TAR_HEADER_SIZE:
            raise BlobError(f"{where}: blob_toc_size {entry.toc_size}, expected 128 x {len(blob.toc)} + 512")


def _check_toc_digests(blob: NydusBlob, bootstrap_raw: Mapped | None, entry: BlobEntry | None) -> str:
    """Recompute every TOC digest and blob_toc_digest; returns the sha256 of the whole blob."""
    whole = hashlib.sha256()
    image_blob = hashlib.sha256()
    image_blob_end = blob.chunk_data_size + TAR_HEADER_SIZE if IMAGE_BLOB in blob.parts_by_name else 0
    with open(blob.path, "rb") as handle:
        pos = 0
        while block := handle.read(_READ_SIZE):
            whole.update(block)
            if pos < image_blob_end:
                image_blob.update(block[: image_blob_end - pos])
            pos += len(block)
    if pos != blob.size:
        raise BlobError(f"{blob.where}: changed while being read")
    header_raw = b""
    digest_part = blob.parts_by_name.get(BLOB_DIGEST)
    if blob.header is not None:
        meta = blob.parts_by_name[BLOB_META]
        header_raw = blob._read(meta.offset + meta.size - BLOB_META_HEADER_SIZE, BLOB_META_HEADER_SIZE)
    actual = {
        IMAGE_BLOB: image_blob.digest(),
        BLOB_META: _sha256(blob.ci_raw),
        BLOB_META_HEADER: hashlib.sha256(header_raw).digest(),
        BLOB_DIGEST: blob.sha256_of(digest_part.offset, digest_part.size) if digest_part else b"",
        IMAGE_BOOT: _sha256(bootstrap_raw or b""),
    }
    for toc_entry in blob.toc:
        if toc_entry.digest != actual[toc_entry.name]:
            raise BlobError(
                f"{blob.where}: TOC digest of {toc_entry.name} is {toc_entry.digest.hex()}, computed "
                f"{actual[toc_entry.name].hex()}"
            )
    if blob.toc and entry is not None and any(entry.toc_digest):
        part = blob.parts_by_name[BLOB_TOC]
        toc_digest = hashlib.sha256(blob._read(part.offset, part.size + TAR_HEADER_SIZE)).digest()
        # nydus-snapshotter hashes a ref blob's TOC entries without their tar header (nydus-zran.md §2.2)
        data_only = hashlib.sha256(blob._read(part.offset, part.size)).digest()
        if toc_digest != entry.toc_digest and not (blob.is_zran and data_only == entry.toc_digest):
            raise BlobError(
                f"{blob.where}: blob_toc_digest in the bootstrap is {entry.toc_digest.hex()}, computed "
                f"sha256(TOC entries | header) = {toc_digest.hex()}"
            )
    return whole.hexdigest()


def _sha256(data: Buffer) -> bytes:
    """sha256 of a buffer, a piece at a time: a mapping's pages are dropped as it is read."""
    sha = hashlib.sha256()
    view = memoryview(data)
    for start in range(0, len(view), _HASH_PIECE):
        sha.update(view[start : start + _HASH_PIECE])
        release_pages(data)
    return sha.digest()


def _check_chunks(blob: NydusBlob, entry: BlobEntry, records: Mapping[int, ChunkRecord]) -> Digests:
    digests = bytearray()
    with open(blob.path, "rb") as handle:
        for info in blob.chunks:
            data = blob.read_chunk_of(info, entry.compressor, handle)
            if info.uncompressed_size > entry.chunk_size:
                raise BlobError(
                    f"{blob.where}: chunk {info.index} has "
                    f"{info.uncompressed_size} bytes, above the chunk size"
                )
            digest, problem = chunk_data_problem(blob, info, data, entry.digester, records.get(info.index))
            if problem:
                raise BlobError(
                    f"{blob.where}: chunk {info.index} "
                    f"(compressed offset {info.compressed_offset}): {problem}"
                )
            digests += digest
    return Digests(digests)


def chunk_data_problem(
    blob: NydusBlob, info: ChunkInfo, data: bytes, digester: int, record: ChunkRecord | None
) -> tuple[bytes, str]:
    """The chunk's digest, and what is wrong with it ("" when nothing): `where` is only built on error."""
    digest = chunk_digest(digester, data)
    for source, wanted in (
        ("blob.digest", blob.digests[info.index] if blob.digests else None),
        ("chunk table", record.digest if record is not None else None),
    ):
        if wanted is not None and wanted != digest:
            return digest, f"digest {digest.hex()} != {source} {wanted.hex()}"
    crcs = []
    if record is not None and record.flags & CHUNK_HAS_CRC32:
        crcs.append(("chunk table", record.crc32))
    if info.flags & CI_HAS_CRC32:
        crcs.append(("CI entry", info.data & 0xFFFF_FFFF))
    for source, wanted_crc in crcs:
        if crc32c(data) != wanted_crc:
            return digest, f"CRC-32C {crc32c(data):#010x} != {source} crc32 {wanted_crc:#010x}"
    return digest, ""


def expand_blob(blob: NydusBlob, entry: BlobEntry, out: BinaryIO) -> None:
    """Write the blob's raw EROFS device image: every chunk decompressed at its uncompressed offset."""
    out.truncate(0)
    with open(blob.path, "rb") as handle:
        for info in blob.chunks:
            out.seek(info.uncompressed_offset)
            out.write(blob.read_chunk(info.index, entry.compressor, handle))
    out.truncate(entry.uncompressed_size)
