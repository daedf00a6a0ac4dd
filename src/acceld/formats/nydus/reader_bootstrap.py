"""Parse and validate a RAFS v6 bootstrap (the EROFS-compatible metadata of a Nydus image).

`parse_bootstrap(data)` checks every bootstrap rule of the format document (superblocks, device
and blob tables, inodes, directory entries, xattrs, chunk addresses, chunk and prefetch tables)
and returns a `RafsBootstrap` that reads the tree from `data` again when asked (a bootstrap may
hold a million files: no inode, path or chunk record is kept as an object). Any violation raises
`BootstrapError` naming the structure, its offset or nid, and the expected versus found value.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from acceld.formats.nydus.reader_claims import (
    BLOB_TABLE_CLAIM,
    CHUNK_TABLE_CLAIM,
    DEVICE_TABLE_CLAIM,
    PREFETCH_TABLE_CLAIM,
    SUPERBLOCK_REST_CLAIM,
    SUPERBLOCKS_CLAIM,
    Claims,
)
from acceld.formats.nydus.reader_common import (
    BLOCK_SIZE,
    COMPRESSOR_NAMES,
    DIGESTER_NAMES,
    FEATURE_ALIGNED,
    FEATURE_BATCH,
    FEATURE_CHUNK_INFO_V2,
    FEATURE_ENCRYPTED,
    FEATURE_INLINED_CHUNK_DIGEST,
    FEATURE_IS_CHUNKDICT_GENERATED,
    FEATURE_ZRAN,
    KNOWN_BLOB_FEATURES,
    MAX_BOOTSTRAP_SIZE,
    BootstrapError,
    LazySequence,
    Mapped,
    UnsupportedNydusError,
    align,
    cstring,
    read_at,
    release_pages,
    u16,
    u32,
    u64,
)
from acceld.formats.nydus.reader_inodes import ChunkAddr, Inode, InodeTree

EROFS_MAGIC: Final = 0xE0F5E1E2
RAFS_V5_MAGIC: Final = b"SFAR"  # u32 0x52414653 at offset 0
SUPERBLOCK_OFFSET: Final = 1024
EXT_SUPERBLOCK_OFFSET: Final = 1152
DEVICE_TABLE_OFFSET: Final = 1408
DEVICE_SLOT_SIZE: Final = 128
BLOB_ENTRY_SIZE: Final = 256
CHUNK_RECORD_SIZE: Final = 80
MAX_CHUNKS_PER_BLOB: Final = 1 << 24
MIN_CHUNK_SIZE: Final = 0x1000
MAX_CHUNK_SIZE: Final = 0x100_0000
LEGACY_S_BLOCKS: Final = 4096
DEVICE_ALIGNMENTS: Final = (0x8_0000, 0x20_0000)  # 512 KiB today, 2 MiB before 2023-03

FEATURE_COMPAT_RAFS_V6: Final = 0x4000_0000
FEATURE_INCOMPAT_REQUIRED: Final = 0xC  # CHUNKED_FILE | DEVICE_TABLE

# RafsSuperFlags
FLAG_COMPRESSION_NONE: Final = 0x1
FLAG_COMPRESSION_LZ4: Final = 0x2
FLAG_HASH_BLAKE3: Final = 0x4
FLAG_HASH_SHA256: Final = 0x8
FLAG_HAS_XATTR: Final = 0x20
FLAG_COMPRESSION_GZIP: Final = 0x40
FLAG_COMPRESSION_ZSTD: Final = 0x80
FLAG_INLINED_CHUNK_DIGEST: Final = 0x100
FLAG_TARFS_MODE: Final = 0x200
FLAG_ENCRYPTION_NONE: Final = 0x0100_0000
FLAG_ENCRYPTION_AES128_XTS: Final = 0x0200_0000
KNOWN_SUPER_FLAGS: Final = 0x3FF | FLAG_ENCRYPTION_NONE | FLAG_ENCRYPTION_AES128_XTS
COMPRESSION_FLAGS: Final = {
    FLAG_COMPRESSION_NONE: 0,
    FLAG_COMPRESSION_LZ4: 1,
    FLAG_COMPRESSION_GZIP: 2,
    FLAG_COMPRESSION_ZSTD: 3,
}
HASH_FLAGS: Final = {FLAG_HASH_BLAKE3: 0, FLAG_HASH_SHA256: 1}

# chunk record flags (80-byte chunk table)
CHUNK_COMPRESSED: Final = 0x1
CHUNK_HOLE: Final = 0x2
CHUNK_ENCRYPTED: Final = 0x4
CHUNK_BATCH: Final = 0x8
CHUNK_HAS_CRC32: Final = 0x10
_CHUNK_RECORD: Final = struct.Struct("<32sIIIIQQQII")
_POSITION_BITS: Final = 24  # a chunk table of a bootstrap <= 1 GiB has < 2^24 entries of 80 bytes
_RELEASE_EVERY: Final = 1 << 12  # chunk records checked between drops of the bootstrap mapping's pages


@dataclass(frozen=True)
class BlobEntry:
    """One 256-byte blob-table entry (`RafsV6Blob`)."""

    blob_id: str
    index: int
    chunk_size: int
    chunk_count: int
    compressor: int
    digester: int
    features: int
    compressed_size: int
    uncompressed_size: int
    toc_size: int
    ci_compressor: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int
    toc_digest: bytes
    meta_digest: bytes
    meta_size: int
    cipher_algo: int


@dataclass(frozen=True)
class Device:
    """One 128-byte device slot (EROFS `erofs_deviceslot`)."""

    tag: str
    blocks: int
    mapped_blkaddr: int


class ChunkRecord(NamedTuple):
    """One 80-byte chunk-table entry (`RafsV5ChunkInfo`), decoded (a tuple: made per look-up)."""

    digest: bytes
    blob_index: int
    flags: int
    compressed_size: int
    uncompressed_size: int
    compressed_offset: int
    uncompressed_offset: int
    file_offset: int
    ci_index: int
    crc32: int


class ChunkTable(LazySequence[ChunkRecord]):
    """The chunk table, read from the bootstrap by position; found by (blob, CI index) through one
    sorted array of (blob << 24 | CI index) << 24 | position."""

    def __init__(self, data: Mapped, offset: int, keys: array[int]) -> None:
        self.data, self.offset, self.keys = data, offset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def _item(self, index: int) -> ChunkRecord:
        # look-ups go all over a table sorted by digest: read, not mapped in
        raw = read_at(self.data, self.offset + index * CHUNK_RECORD_SIZE, CHUNK_RECORD_SIZE)
        return ChunkRecord._make(_CHUNK_RECORD.unpack(raw))

    def find(self, blob_index: int, ci_index: int) -> ChunkRecord | None:
        prefix = (blob_index << 24 | ci_index) << _POSITION_BITS
        at = bisect.bisect_left(self.keys, prefix)
        if at == len(self.keys) or self.keys[at] >> _POSITION_BITS != prefix >> _POSITION_BITS:
            return None
        return self[self.keys[at] & (1 << _POSITION_BITS) - 1]

    def of_blob(self, blob_index: int) -> BlobRecords:
        return BlobRecords(self, blob_index)


class BlobRecords(Mapping[int, ChunkRecord]):
    """The chunk-table entries of one blob by CI index (in CI order), read on access."""

    def __init__(self, table: ChunkTable, blob_index: int) -> None:
        self.table, self.blob_index = table, blob_index
        first = blob_index << 24 + _POSITION_BITS
        self.lo = bisect.bisect_left(table.keys, first)
        self.hi = bisect.bisect_left(table.keys, first + (1 << 24 + _POSITION_BITS))

    def __len__(self) -> int:
        return self.hi - self.lo

    def __iter__(self) -> Iterator[int]:
        for at in range(self.lo, self.hi):
            yield self.table.keys[at] >> _POSITION_BITS & 0xFF_FFFF

    def __getitem__(self, ci_index: int) -> ChunkRecord:
        record = self.table.find(self.blob_index, ci_index)
        if record is None:
            raise KeyError(ci_index)
        return record

    def values(self) -> Iterator[ChunkRecord]:  # type: ignore[override]
        mask = (1 << _POSITION_BITS) - 1
        for at in range(self.lo, self.hi):
            yield self.table[self.table.keys[at] & mask]


class RafsBootstrap:
    """A validated RAFS v6 bootstrap: its tables, and its tree read again from `data` on demand."""

    def __init__(
        self,
        data: Mapped,
        flags: int,
        chunk_size: int,
        superblock: dict[str, int],
        blobs: list[BlobEntry],
        devices: list[Device],
        chunk_table: ChunkTable,
        prefetch: tuple[int, int],
    ) -> None:
        self.data = data
        self.size = len(data)
        self.flags = flags
        self.chunk_size = chunk_size
        self.root_nid = superblock["root_nid"]
        self.inode_count = superblock["inos"]
        self.meta_blkaddr = superblock["meta_blkaddr"]
        self.build_time = superblock["build_time"]
        self.blobs = blobs
        self.devices = devices
        self.chunk_table = chunk_table
        self._prefetch = prefetch

    @property
    def compressor(self) -> int:
        return COMPRESSION_FLAGS[_single_flag(self.flags, COMPRESSION_FLAGS)]

    @property
    def digester(self) -> int:
        return HASH_FLAGS[_single_flag(self.flags, HASH_FLAGS)]

    @property
    def prefetch_nids(self) -> list[int]:
        offset, size = self._prefetch
        return [u32(self.data, offset + 4 * i) for i in range(size // 4)]

    def _tree(self) -> InodeTree:
        return InodeTree(
            self.data, self.meta_blkaddr * BLOCK_SIZE, self.chunk_size, self.blobs, self.build_time
        )

    def walk(self) -> Iterator[tuple[str, Inode]]:
        """Every path with its inode (read again, one at a time), parents before children."""
        return self._tree().walk(self.root_nid)

    def inode(self, path: str) -> Inode:
        return self._tree().find(self.root_nid, path)


def _single_flag(flags: int, group: dict[int, int]) -> int:
    return next(bit for bit in group if flags & bit)


def parse_bootstrap(data: Mapped) -> RafsBootstrap:
    """Validate a whole RAFS v6 bootstrap and return its model (raises BootstrapError)."""
    return _BootstrapParser(data).parse()


def _decode_record(data: Mapped, off: int) -> ChunkRecord:
    return ChunkRecord._make(_CHUNK_RECORD.unpack_from(data, off))


class _BootstrapParser:
    def __init__(self, data: Mapped) -> None:
        self.data = data
        self.claims = Claims()  # [start, end) of every structure, for overlap checks

    # -- superblocks and tables ---------------------------------------------------------------

    def parse(self) -> RafsBootstrap:
        data = self.data
        if data[:4] == RAFS_V5_MAGIC:
            version = u32(data, 4) if len(data) >= 8 else 0
            raise UnsupportedNydusError(
                f"RAFS v5 bootstrap (magic 0x52414653 at offset 0, version {version:#x}) is not supported; "
                "only RAFS v6 is"
            )
        if len(data) < BLOCK_SIZE:
            raise BootstrapError(f"bootstrap is {len(data)} bytes; a RAFS v6 bootstrap has at least 4096")
        magic = u32(data, SUPERBLOCK_OFFSET)
        if magic != EROFS_MAGIC:
            raise BootstrapError(
                f"not a RAFS v6 bootstrap: superblock magic {magic:#010x} at offset 1024, expected 0xe0f5e1e2"
            )
        if len(data) % BLOCK_SIZE:
            raise BootstrapError(f"bootstrap size {len(data)} is not a multiple of 4096")
        if len(data) > MAX_BOOTSTRAP_SIZE:
            raise BootstrapError(f"bootstrap is {len(data)} bytes, above 1 GiB")
        sb = self._superblock()
        flags = u64(data, EXT_SUPERBLOCK_OFFSET)
        self._check_flags(flags)
        chunk_size = u32(data, EXT_SUPERBLOCK_OFFSET + 20)
        if chunk_size & (chunk_size - 1) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BootstrapError(
                f"extended superblock s_chunk_size {chunk_size:#x}: "
                "expected a power of two from 4 KiB to 16 MiB"
            )
        self._check_ext_reserved()
        self.chunk_size = chunk_size
        extra_devices = sb["extra_devices"]
        self.claims.add(0, EXT_SUPERBLOCK_OFFSET + 256, SUPERBLOCKS_CLAIM)
        devices = self._devices(extra_devices)
        blobs = self._blob_table(chunk_size, flags)
        if len(blobs) != extra_devices:
            raise BootstrapError(
                f"superblock s_extra_devices is {extra_devices} but the blob table has {len(blobs)} entries"
            )
        self._check_devices_against_blobs(devices, blobs)
        device_blocks = sum(dev.blocks for dev in devices)
        if sb["blocks"] not in (device_blocks, LEGACY_S_BLOCKS) and not (not devices and sb["blocks"] == 0):
            raise BootstrapError(
                f"superblock s_blocks is {sb['blocks']}, expected the sum of device blocks {device_blocks}"
            )
        all_inlined = all(blob.features & FEATURE_INLINED_CHUNK_DIGEST for blob in blobs)
        if bool(flags & FLAG_INLINED_CHUNK_DIGEST) != all_inlined:
            raise BootstrapError(
                f"s_flags INLINED_CHUNK_DIGEST is {'set' if flags & FLAG_INLINED_CHUNK_DIGEST else 'clear'} "
                f"but {'every' if all_inlined else 'not every'} blob has the INLINED_CHUNK_DIGEST feature"
            )
        chunk_table = self._chunk_table(blobs)
        prefetch = self._prefetch_table_location()
        root_nid = sb["root_nid"]
        self.chunk_table = chunk_table
        tree = InodeTree(
            data,
            sb["meta_blkaddr"] * BLOCK_SIZE,
            chunk_size,
            blobs,
            sb["build_time"],
            self.claims,
            self._check_chunk if len(chunk_table) else None,
        )
        names = sum(1 for _ in tree.walk(root_nid))
        tree.check_links()
        if tree.has_xattrs and not flags & FLAG_HAS_XATTR:
            raise BootstrapError("inodes carry xattrs but s_flags lacks HAS_XATTR (0x20)")
        if sb["inos"] != names:
            raise BootstrapError(
                f"superblock s_inos is {sb['inos']}, expected {names} (tree entries incl. hardlink names)"
            )
        self._check_prefetch_nids(*prefetch, tree)
        del tree
        bootstrap = RafsBootstrap(data, flags, chunk_size, sb, blobs, devices, chunk_table, prefetch)
        self.claims.check(lambda nid: _describe_inode(bootstrap, nid))
        return bootstrap

    def _superblock(self) -> dict[str, int]:
        data, base = self.data, SUPERBLOCK_OFFSET

        def expect(name: str, off: int, found: int, wanted: int) -> None:
            if found != wanted:
                raise BootstrapError(
                    f"superblock {name} (offset {base + off}) is {found:#x}, expected {wanted:#x}"
                )

        expect("s_checksum", 4, u32(data, base + 4), 0)
        compat = u32(data, base + 8)
        if not compat & FEATURE_COMPAT_RAFS_V6:
            raise BootstrapError(f"superblock s_feature_compat {compat:#x} lacks RAFS_V6 (0x40000000)")
        blkszbits = data[base + 12]
        if blkszbits == 9:
            raise UnsupportedNydusError("tarfs bootstrap (s_blkszbits 9, 512-byte blocks) is not supported")
        expect("s_blkszbits", 12, blkszbits, 12)
        expect("s_extslots", 13, data[base + 13], 0)
        root_nid = u16(data, base + 14)
        if root_nid == 0:
            raise BootstrapError("superblock s_root_nid (offset 1038) is 0")
        inos = u64(data, base + 16)
        if inos == 0:
            raise BootstrapError("superblock s_inos (offset 1040) is 0")
        expect("s_xattr_blkaddr", 44, u32(data, base + 44), 0)
        expect("s_feature_incompat", 80, u32(data, base + 80), FEATURE_INCOMPAT_REQUIRED)
        expect("s_u", 84, u16(data, base + 84), 0)
        expect("s_devt_slotoff", 88, u16(data, base + 88), DEVICE_TABLE_OFFSET // DEVICE_SLOT_SIZE)
        meta_blkaddr = u32(data, base + 40)
        if meta_blkaddr * BLOCK_SIZE >= len(data):
            raise BootstrapError(
                f"superblock s_meta_blkaddr {meta_blkaddr} points past the {len(data)}-byte bootstrap"
            )
        return {
            "root_nid": root_nid,
            "inos": inos,
            "build_time": u64(data, base + 24),
            "blocks": u32(data, base + 36),
            "meta_blkaddr": meta_blkaddr,
            "extra_devices": u16(data, base + 86),
        }

    def _check_flags(self, flags: int) -> None:
        if flags & ~KNOWN_SUPER_FLAGS:
            raise BootstrapError(
                f"extended superblock s_flags {flags:#x} has unknown bits {flags & ~KNOWN_SUPER_FLAGS:#x}"
            )
        for group, what in ((COMPRESSION_FLAGS, "compression"), (HASH_FLAGS, "hash")):
            present = [bit for bit in group if flags & bit]
            if len(present) != 1:
                raise BootstrapError(
                    f"extended superblock s_flags {flags:#x}: expected "
                    f"exactly one {what} bit, found {len(present)}"
                )
        if flags & FLAG_ENCRYPTION_AES128_XTS:
            raise UnsupportedNydusError(
                "encrypted RAFS v6 bootstrap (ENCRYPTION_ASE_128_XTS) is not supported"
            )
        if flags & FLAG_TARFS_MODE:
            raise UnsupportedNydusError("tarfs bootstrap (s_flags TARTFS_MODE) is not supported")

    def _check_ext_reserved(self) -> None:
        base = EXT_SUPERBLOCK_OFFSET
        if u32(self.data, base + 52) != 0:
            raise BootstrapError(f"extended superblock s_padding (offset {base + 52}) is not 0")
        if any(self.data[base + 56 : base + 256]):
            raise BootstrapError(
                f"extended superblock reserved bytes (offset {base + 56}..{base + 256}) are not 0"
            )

    def _devices(self, count: int) -> list[Device]:
        data = self.data
        end = DEVICE_TABLE_OFFSET + count * DEVICE_SLOT_SIZE
        if end > len(data):
            raise BootstrapError(
                f"device table ({count} slots) ends at {end}, past the bootstrap end {len(data)}"
            )
        self.claims.add(DEVICE_TABLE_OFFSET, end, DEVICE_TABLE_CLAIM)
        if end < BLOCK_SIZE:
            self.claims.add(end, BLOCK_SIZE, SUPERBLOCK_REST_CLAIM)
        devices = []
        seen: set[str] = set()
        for i in range(count):
            off = DEVICE_TABLE_OFFSET + i * DEVICE_SLOT_SIZE
            tag = _blob_id(data[off : off + 64], f"device slot {i} (offset {off}) tag")
            if tag in seen:
                raise BootstrapError(f"device slot {i} (offset {off}) repeats tag {tag}")
            seen.add(tag)
            blocks = u32(data, off + 64)
            if blocks == 0:
                raise BootstrapError(f"device slot {i} (offset {off}) has 0 blocks")
            devices.append(Device(tag=tag, blocks=blocks, mapped_blkaddr=u32(data, off + 68)))
        return devices

    def _blob_table(self, chunk_size: int, flags: int) -> list[BlobEntry]:
        data, base = self.data, EXT_SUPERBLOCK_OFFSET
        offset, size = u64(data, base + 8), u32(data, base + 16)
        devslot_end = DEVICE_TABLE_OFFSET + u16(data, SUPERBLOCK_OFFSET + 86) * DEVICE_SLOT_SIZE
        if offset % BLOCK_SIZE or offset < BLOCK_SIZE or offset < devslot_end or size % BLOB_ENTRY_SIZE:
            raise BootstrapError(
                f"blob table offset {offset:#x} / size {size:#x}: expected a 4K-aligned offset >= 4096 after "
                f"the device table (end {devslot_end:#x}) and a size that is a multiple of 256"
            )
        if offset + size > len(data):
            raise BootstrapError(
                f"blob table {offset:#x}+{size:#x} runs past the bootstrap end {len(data):#x}"
            )
        self.claims.add(offset, offset + size, BLOB_TABLE_CLAIM)
        blobs = []
        for i in range(size // BLOB_ENTRY_SIZE):
            blobs.append(self._blob_entry(offset + i * BLOB_ENTRY_SIZE, i, chunk_size, flags))
        return blobs

    def _blob_entry(self, off: int, position: int, chunk_size: int, flags: int) -> BlobEntry:
        data = self.data
        where = f"blob table entry {position} (offset {off:#x})"
        entry = BlobEntry(
            blob_id=_blob_id(data[off : off + 64], f"{where} blob_id"),
            index=u32(data, off + 64),
            chunk_size=u32(data, off + 68),
            chunk_count=u32(data, off + 72),
            compressor=u32(data, off + 76),
            digester=u32(data, off + 80),
            features=u32(data, off + 84),
            compressed_size=u64(data, off + 88),
            uncompressed_size=u64(data, off + 96),
            toc_size=u32(data, off + 104),
            ci_compressor=u32(data, off + 108),
            ci_offset=u64(data, off + 112),
            ci_compressed_size=u64(data, off + 120),
            ci_uncompressed_size=u64(data, off + 128),
            toc_digest=bytes(data[off + 136 : off + 168]),
            meta_digest=bytes(data[off + 168 : off + 200]),
            meta_size=u64(data, off + 200),
            cipher_algo=u32(data, off + 216),
        )

        def fail(message: str) -> BootstrapError:
            return BootstrapError(f"{where}: {message}")

        if entry.index != position:
            raise fail(f"blob_index is {entry.index}, expected its position {position}")
        if entry.chunk_size != chunk_size:
            raise fail(
                f"chunk_size {entry.chunk_size:#x} differs from the superblock chunk size {chunk_size:#x}"
            )
        if entry.chunk_count > MAX_CHUNKS_PER_BLOB:
            raise fail(f"chunk_count {entry.chunk_count} exceeds 2^24")
        for name, code in (("compression_algo", entry.compressor), ("ci_compressor", entry.ci_compressor)):
            if code not in COMPRESSOR_NAMES:
                raise fail(f"{name} {code} is not a known compressor (0 none, 1 lz4_block, 2 gzip, 3 zstd)")
        if entry.digester not in DIGESTER_NAMES:
            raise fail(f"digest_algo {entry.digester} is not 0 (blake3) or 1 (sha256)")
        if entry.digester != HASH_FLAGS[_single_flag(flags, HASH_FLAGS)]:
            raise fail(
                f"digest_algo {DIGESTER_NAMES[entry.digester]} differs from the superblock hash "
                f"{DIGESTER_NAMES[HASH_FLAGS[_single_flag(flags, HASH_FLAGS)]]}"
            )
        if entry.cipher_algo != 0 or entry.features & FEATURE_ENCRYPTED:
            raise UnsupportedNydusError(f"{where}: encrypted blobs are not supported")
        if entry.features & ~KNOWN_BLOB_FEATURES:
            raise fail(
                f"features {entry.features:#x} has unknown bits {entry.features & ~KNOWN_BLOB_FEATURES:#x}"
            )
        if not entry.features & FEATURE_ALIGNED:
            raise fail(f"features {entry.features:#x} lack ALIGNED (0x1)")
        if entry.ci_compressed_size > entry.ci_uncompressed_size:
            raise fail(
                f"ci_compressed_size {entry.ci_compressed_size} exceeds ci_uncompressed_size "
                f"{entry.ci_uncompressed_size}"
            )
        _check_ci_size(entry, where)
        if entry.uncompressed_size % BLOCK_SIZE:
            raise fail(f"uncompressed_size {entry.uncompressed_size} is not a multiple of 4096")
        if entry.uncompressed_size > 1 << 44 or entry.compressed_size > 1 << 40:
            raise fail(f"blob sizes {entry.compressed_size}/{entry.uncompressed_size} exceed 2^40/2^44")
        return entry

    def _check_devices_against_blobs(self, devices: list[Device], blobs: list[BlobEntry]) -> None:
        position = len(self.data)
        mapped = [dev.mapped_blkaddr for dev in devices]
        flat_view = any(mapped)
        for i, (dev, blob) in enumerate(zip(devices, blobs, strict=True)):
            if dev.tag != blob.blob_id:
                raise BootstrapError(
                    f"device slot {i} tag {dev.tag} differs from blob table id {blob.blob_id}"
                )
            if dev.blocks * BLOCK_SIZE != blob.uncompressed_size:
                raise BootstrapError(
                    f"device slot {i} has {dev.blocks} blocks, expected uncompressed_size/4096 = "
                    f"{blob.uncompressed_size // BLOCK_SIZE}"
                )
            if flat_view:
                allowed = {align(position, a) // BLOCK_SIZE for a in DEVICE_ALIGNMENTS}
                if dev.mapped_blkaddr not in allowed:
                    raise BootstrapError(
                        f"device slot {i} mapped_blkaddr {dev.mapped_blkaddr}, expected "
                        f"{min(allowed)} (previous end {position} aligned to 512 KiB)"
                    )
                position = (dev.mapped_blkaddr + dev.blocks) * BLOCK_SIZE

    def _chunk_table(self, blobs: list[BlobEntry]) -> ChunkTable:
        data, base = self.data, EXT_SUPERBLOCK_OFFSET
        offset, size = u64(data, base + 24), u64(data, base + 32)
        keys: array[int] = array("Q")
        if size == 0:
            return ChunkTable(data, 0, keys)
        if (
            offset % BLOCK_SIZE
            or offset < BLOCK_SIZE
            or size % CHUNK_RECORD_SIZE
            or offset + size > len(data)
        ):
            raise BootstrapError(
                f"chunk table offset {offset:#x} / size {size:#x}: expected a 4K-aligned offset >= 4096, a "
                f"multiple of 80 bytes, inside the {len(data):#x}-byte bootstrap"
            )
        self.claims.add(offset, offset + size, CHUNK_TABLE_CLAIM)
        # Current builders sort entries by digest; 2022 builders used hash-map order: order is not checked.
        for i in range(size // CHUNK_RECORD_SIZE):
            off = offset + i * CHUNK_RECORD_SIZE
            rec = _decode_record(data, off)
            _check_chunk_record(rec, i, off, blobs, self.chunk_size)
            if i % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                release_pages(data)
            keys.append((rec.blob_index << 24 | rec.ci_index) << _POSITION_BITS | i)
        view = np.frombuffer(keys, dtype=np.uint64)
        view.sort()
        blob_ci = view >> np.uint64(_POSITION_BITS)
        repeats = np.nonzero(blob_ci[1:] == blob_ci[:-1])[0]
        del blob_ci
        if len(repeats):
            i = int(min(view[repeats + 1] & np.uint64((1 << _POSITION_BITS) - 1)))
            rec = _decode_record(data, offset + i * CHUNK_RECORD_SIZE)
            raise BootstrapError(
                f"chunk table entry {i} (offset {offset + i * CHUNK_RECORD_SIZE:#x}) repeats "
                f"blob {rec.blob_index} CI index {rec.ci_index}"
            )
        del view, repeats
        return ChunkTable(data, offset, keys)

    def _prefetch_table_location(self) -> tuple[int, int]:
        data, base = self.data, EXT_SUPERBLOCK_OFFSET
        offset, size = u64(data, base + 40), u32(data, base + 48)
        if size % 4:
            raise BootstrapError(f"prefetch table size {size} is not a multiple of 4")
        if size == 0 or offset == 0:  # legacy empty filesystems: size without offset
            return 0, 0
        if offset < BLOCK_SIZE or offset + size > len(data):
            raise BootstrapError(f"prefetch table {offset:#x}+{size:#x} is outside 4096..{len(data):#x}")
        self.claims.add(offset, offset + size, PREFETCH_TABLE_CLAIM)
        return offset, size

    def _check_prefetch_nids(self, offset: int, size: int, tree: InodeTree) -> None:
        for i in range(size // 4):
            nid = u32(self.data, offset + 4 * i)
            if not tree.reached(nid):
                raise BootstrapError(
                    f"prefetch table entry {i} (offset {offset + 4 * i:#x}) names nid {nid}, "
                    "which is not an inode of the tree"
                )

    def _check_chunk(self, inode: Inode, i: int, addr: ChunkAddr) -> None:
        """A chunk address agrees with the chunk table entry of its (blob, CI index)."""
        rec = self.chunk_table.find(addr.blob_index, addr.ci_index)
        where = f"inode nid {inode.nid} chunk {i}"
        if rec is None:
            raise BootstrapError(
                f"{where}: blob {addr.blob_index} CI index {addr.ci_index} has no chunk table entry"
            )
        if rec.uncompressed_offset != addr.blk_addr * BLOCK_SIZE:
            raise BootstrapError(
                f"{where}: c_blk_addr {addr.blk_addr} x 4096 != chunk table uncompressed_offset "
                f"{rec.uncompressed_offset}"
            )
        piece = min(self.chunk_size, inode.size - i * self.chunk_size)
        if rec.uncompressed_size != piece:
            raise BootstrapError(
                f"{where}: chunk table uncompressed_size {rec.uncompressed_size}, expected {piece} "
                f"(file size {inode.size})"
            )


def _describe_inode(bootstrap: RafsBootstrap, nid: int) -> str:
    """How the walk names an inode in messages (its first path; only needed to report an overlap)."""
    path = next((path for path, inode in bootstrap.walk() if inode.nid == nid), "?")
    return f"inode nid {nid} ({path}, offset {bootstrap.meta_blkaddr * BLOCK_SIZE + nid * 32:#x})"


def _blob_id(raw: bytes, where: str) -> str:
    text = cstring(raw)
    try:
        blob_id = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise BootstrapError(f"{where} is not ASCII") from exc
    if len(blob_id) != 64:
        raise BootstrapError(f"{where} {blob_id!r} is {len(blob_id)} characters, expected 64")
    return blob_id


def _check_ci_size(entry: BlobEntry, where: str) -> None:
    count, usize, features = entry.chunk_count, entry.ci_uncompressed_size, entry.features
    if features & FEATURE_CHUNK_INFO_V2:
        if features & (FEATURE_BATCH | FEATURE_ZRAN | FEATURE_ENCRYPTED):
            if usize < 24 * count:
                raise BootstrapError(
                    f"{where}: ci_uncompressed_size {usize} is below 24 x chunk_count {count} (CI v2)"
                )
        elif usize != 24 * count:
            raise BootstrapError(f"{where}: ci_uncompressed_size {usize} != 24 x chunk_count {count} (CI v2)")
    elif features & (FEATURE_BATCH | FEATURE_ZRAN | FEATURE_ENCRYPTED):
        raise BootstrapError(f"{where}: features {features:#x}: BATCH/ZRAN/ENCRYPTED need CHUNK_INFO_V2")
    elif not features & FEATURE_IS_CHUNKDICT_GENERATED and usize != 16 * count:
        raise BootstrapError(f"{where}: ci_uncompressed_size {usize} != 16 x chunk_count {count} (CI v1)")


def _check_chunk_record(rec: ChunkRecord, i: int, off: int, blobs: list[BlobEntry], chunk_size: int) -> None:
    where = f"chunk table entry {i} (offset {off:#x})"
    if rec.blob_index >= len(blobs):
        raise BootstrapError(f"{where}: blob_index {rec.blob_index}, but there are {len(blobs)} blobs")
    blob = blobs[rec.blob_index]
    if rec.flags & ~0x1F:
        raise BootstrapError(f"{where}: unknown flags {rec.flags:#x}")
    if rec.flags & (CHUNK_ENCRYPTED | CHUNK_BATCH | CHUNK_HOLE):
        raise UnsupportedNydusError(
            f"{where}: encrypted, batch or hole chunks (flags {rec.flags:#x}) are not supported"
        )
    if rec.ci_index >= blob.chunk_count:
        raise BootstrapError(
            f"{where}: index {rec.ci_index} >= chunk_count {blob.chunk_count} of blob {rec.blob_index}"
        )
    if not 0 < rec.uncompressed_size <= chunk_size:
        raise BootstrapError(f"{where}: uncompressed_size {rec.uncompressed_size} not in 1..{chunk_size}")
    if rec.uncompressed_offset % BLOCK_SIZE:
        raise BootstrapError(f"{where}: uncompressed_offset {rec.uncompressed_offset:#x} is not 4K-aligned")
    if rec.uncompressed_offset + rec.uncompressed_size > blob.uncompressed_size:
        raise BootstrapError(f"{where}: chunk ends past blob uncompressed_size {blob.uncompressed_size}")
    compressed = bool(rec.flags & CHUNK_COMPRESSED)
    if blob.features & FEATURE_ZRAN:
        # a zran chunk's compressed range is the gzip input consumed while it was inflated
        if not compressed or rec.compressed_size == 0:
            raise BootstrapError(f"{where}: a zran chunk must be COMPRESSED with a non-empty gzip range")
        return
    if compressed and rec.compressed_size >= rec.uncompressed_size:
        raise BootstrapError(
            f"{where}: COMPRESSED but compressed_size {rec.compressed_size} >= uncompressed_size "
            f"{rec.uncompressed_size}"
        )
    if not compressed and rec.compressed_size != rec.uncompressed_size:
        raise BootstrapError(
            f"{where}: not COMPRESSED but compressed_size {rec.compressed_size} != uncompressed_size "
            f"{rec.uncompressed_size}"
        )
