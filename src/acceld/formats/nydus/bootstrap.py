"""Serialise a RAFS tree into a RAFS v6 bootstrap (§5): an EROFS image whose files live in blobs.

Layout: superblock, extended superblock, device table, blob table, prefetch table, an empty
block, then inodes (root = nid 128) with inline xattrs, inline directory/symlink tails and chunk
indexes, then whole data blocks of large directories and symlinks, then the chunk table.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.nydus.codec import ZSTD_LEVEL
from acceld.formats.nydus.layout import (
    BLOB_ENTRY_SIZE,
    BLOB_INLINED_CHUNK_DIGEST,
    BLOCK,
    CHUNK_COMPRESSED,
    CHUNK_FORMAT_INDEXES,
    CHUNK_RECORD_SIZE,
    DEVICE_SLOT_SIZE,
    DEVICE_TABLE_OFFSET,
    DEVT_SLOTOFF,
    DIRENT_SIZE,
    EROFS_MAGIC,
    EXT_SB_OFFSET,
    FEATURE_COMPAT_RAFS_V6,
    FEATURE_INCOMPAT,
    FLAG_COMPRESSION,
    FLAG_ENCRYPTION_NONE,
    FLAG_EXPLICIT_UID_GID,
    FLAG_HAS_XATTR,
    FLAG_HASH,
    FLAG_INLINED_CHUNK_DIGEST,
    FLAT_DEVICE_ALIGN,
    FT_BLK,
    FT_CHR,
    FT_DIR,
    FT_FIFO,
    FT_REG,
    FT_SOCK,
    FT_SYMLINK,
    INODE_EXTENDED,
    INODE_SIZE,
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    LAYOUT_FLAT_PLAIN,
    ROOT_NID,
    SB_OFFSET,
    BlobInfo,
    align,
    xattr_name_index,
)
from acceld.formats.nydus.tree import Inode, lookup

_FILE_TYPES = {
    stat.S_IFREG: FT_REG,
    stat.S_IFDIR: FT_DIR,
    stat.S_IFCHR: FT_CHR,
    stat.S_IFBLK: FT_BLK,
    stat.S_IFIFO: FT_FIFO,
    stat.S_IFSOCK: FT_SOCK,
    stat.S_IFLNK: FT_SYMLINK,
}


@dataclass(frozen=True)
class BootstrapSettings:
    chunk_size: int
    compressor: str
    digester: str
    blobs: Sequence[BlobInfo]
    prefetch_patterns: Sequence[str] = ("/",)
    always_has_xattr: bool = False  # merged bootstraps always carry HAS_XATTR (§5.3)


def pack_xattrs(xattrs: dict[bytes, bytes]) -> bytes:
    """The inline xattr body (§5.8): 12-byte header plus 4-byte aligned entries; empty when none."""
    if not xattrs:
        return b""
    body = bytearray(12)
    for name in sorted(xattrs):
        value = xattrs[name]
        indexed = xattr_name_index(name)
        if indexed is None:
            raise FormatError(f"invalid xattr key {name!r}")
        index, suffix = indexed
        body += struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
        body += b"\0" * (align(len(body), 4) - len(body))
    return bytes(body)


def dirent_blocks(names: Sequence[bytes]) -> list[list[bytes]]:
    """Split sorted names into 4 KiB dirent blocks; an entry never straddles blocks (§5.7)."""
    blocks: list[list[bytes]] = [[]]
    used = 0
    for name in names:
        need = DIRENT_SIZE + len(name)
        if used + need > BLOCK:
            blocks.append([])
            used = 0
        blocks[-1].append(name)
        used += need
    return blocks


class _Record:
    """Layout facts about one inode, filled in over the passes of `build_bootstrap`."""

    __slots__ = (
        "blocks",
        "data_block",
        "ino",
        "inode",
        "layout",
        "nlink",
        "plain_blocks",
        "position",
        "size",
        "tail",
        "xattrs",
    )

    def __init__(self, inode: Inode, ino: int) -> None:
        self.inode = inode
        self.ino = ino
        self.nlink = 0
        self.xattrs = pack_xattrs(inode.xattrs)
        self.blocks: Sequence[list[bytes]] = ()  # a directory's dirent names, block by block
        self.size = inode.size
        self.layout = LAYOUT_FLAT_PLAIN
        self.plain_blocks = 0
        self.tail = 0
        self.position = 0
        self.data_block = 0

    def plan(self) -> None:
        inode = self.inode
        if inode.is_reg:
            self.layout = LAYOUT_CHUNK_BASED
            return
        if inode.is_dir:
            self.blocks = dirent_blocks(sorted([b".", b"..", *inode.children]))
            last = self.blocks[-1]
            self.size = BLOCK * (len(self.blocks) - 1) + DIRENT_SIZE * len(last) + sum(map(len, last))
        elif inode.is_symlink:
            self.size = len(inode.target)
        else:
            self.size = 0
            return
        tail = self.size % BLOCK
        if tail and INODE_SIZE + len(self.xattrs) + tail <= BLOCK:
            self.layout, self.tail, self.plain_blocks = LAYOUT_FLAT_INLINE, tail, self.size // BLOCK
        else:
            self.plain_blocks = -(-self.size // BLOCK)

    @property
    def head_size(self) -> int:
        """Bytes that must stay within one block: inode, xattrs and an inline tail."""
        return INODE_SIZE + len(self.xattrs) + self.tail

    @property
    def record_size(self) -> int:
        if self.layout == LAYOUT_CHUNK_BASED:
            return align(INODE_SIZE + len(self.xattrs), 8) + 8 * len(self.inode.chunks)
        return self.head_size


def _number_and_order(root: Inode) -> tuple[list[_Record], dict[int, _Record], dict[int, Inode], int]:
    """i_ino numbering (§5.6) and the placement order; returns records, by id, parents, s_inos."""
    records = {id(root): _Record(root, 1)}
    parents = {id(root): root}
    order = [records[id(root)]]
    counter = 1

    def visit(directory: Inode) -> None:
        nonlocal counter
        names = sorted(directory.children)
        for name in names:
            child = directory.children[name]
            counter += 1
            record = records.get(id(child))
            if record is None:
                record = records[id(child)] = _Record(child, counter)
                if not child.is_dir:
                    order.append(record)
            record.nlink += 1
        for name in names:
            child = directory.children[name]
            if child.is_dir:
                parents[id(child)] = directory
                order.append(records[id(child)])
                visit(child)

    visit(root)
    for record in order:
        if record.inode.is_dir:
            record.nlink = 2 + sum(1 for c in record.inode.children.values() if c.is_dir)
    return order, records, parents, counter


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Bootstrap:
    """A bootstrap laid out in memory as records only; `write` streams its bytes (never held whole:
    a bootstrap of 1 M files is about 200 MB)."""

    def __init__(self, root: Inode, settings: BootstrapSettings) -> None:
        blobs = list(settings.blobs)
        self.blob_index = {blob.blob_id: i for i, blob in enumerate(blobs)}
        self.chunk_bits = settings.chunk_size.bit_length() - 1
        order, records, parents, s_inos = _number_and_order(root)
        self.order, self.records, self.parents = order, records, parents
        for record in order:
            record.plan()

        blob_table_offset = align(DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * len(blobs), BLOCK)
        blob_table_size = BLOB_ENTRY_SIZE * len(blobs)
        prefetch_offset = blob_table_offset + blob_table_size
        prefetch_count_max = len(settings.prefetch_patterns) if blobs else 0
        # the prefetch table needs nids, which need meta_addr: reserve room for every pattern
        self.meta_addr = meta_addr = align(prefetch_offset + 4 * prefetch_count_max, BLOCK) if blobs else 0

        cursor = meta_addr + BLOCK
        for record in order:
            cursor = align(cursor, 32)
            if record.head_size <= BLOCK and cursor % BLOCK + record.head_size > BLOCK:
                cursor = align(cursor, BLOCK)
            record.position = cursor
            cursor += record.record_size
        self.inodes_end = cursor
        block_cursor = align(cursor, BLOCK)
        for record in order:
            if record.plain_blocks:
                record.data_block = block_cursor // BLOCK
                block_cursor += record.plain_blocks * BLOCK

        if self.nid(root) != ROOT_NID:
            raise AssertionError("root inode must be nid 128")

        chunk_rows: dict[tuple[bytes, int], bytes] = {}
        for record in order:
            for number, chunk in enumerate(record.inode.chunks):
                key = (chunk.digest, self.blob_index[chunk.blob_id])
                if key not in chunk_rows:
                    chunk_rows[key] = struct.pack(
                        "<32sIIIIQQQII",
                        chunk.digest,
                        key[1],
                        CHUNK_COMPRESSED if chunk.compressed else 0,
                        chunk.compressed_size,
                        chunk.uncompressed_size,
                        chunk.compressed_offset,
                        chunk.uncompressed_offset,
                        number * settings.chunk_size,
                        chunk.index,
                        0,
                    )
        self.chunk_table_offset = align(block_cursor, BLOCK)
        self.chunk_rows = [chunk_rows[key] for key in sorted(chunk_rows)]
        del chunk_rows
        chunk_table_size = CHUNK_RECORD_SIZE * len(self.chunk_rows)
        self.size = align(self.chunk_table_offset + chunk_table_size, BLOCK)

        header = self.header = bytearray(meta_addr)
        prefetch: list[int] = []
        for pattern in settings.prefetch_patterns[:prefetch_count_max]:
            target = lookup(root, pattern)
            if target is not None and self.nid(target) not in prefetch:
                prefetch.append(self.nid(target))
        if prefetch:
            struct.pack_into(f"<{len(prefetch)}I", header, prefetch_offset, *prefetch)

        position = self.size
        for index, blob in enumerate(blobs):
            mapped = align(position, FLAT_DEVICE_ALIGN) // BLOCK
            blocks = blob.uncompressed_size // BLOCK
            position = (mapped + blocks) * BLOCK
            struct.pack_into(
                "<64sII",
                header,
                DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * index,
                blob.blob_id.encode("ascii"),
                blocks,
                mapped,
            )
            entry = blob_table_offset + BLOB_ENTRY_SIZE * index
            header[entry : entry + BLOB_ENTRY_SIZE] = blob.pack(index)

        has_xattr = settings.always_has_xattr or any(r.inode.xattrs for r in order)
        flags = (
            FLAG_COMPRESSION[settings.compressor]
            | FLAG_HASH[settings.digester]
            | FLAG_EXPLICIT_UID_GID
            | FLAG_ENCRYPTION_NONE
            | (FLAG_HAS_XATTR if has_xattr else 0)
            | (FLAG_INLINED_CHUNK_DIGEST if all(b.features & BLOB_INLINED_CHUNK_DIGEST for b in blobs) else 0)
        )
        superblock = struct.pack(
            "<IIIBBHQQIIII16s16sIHHH",
            EROFS_MAGIC,
            0,
            FEATURE_COMPAT_RAFS_V6,
            12,
            0,
            ROOT_NID,
            s_inos,
            0,
            0,
            sum(blob.uncompressed_size // BLOCK for blob in blobs),
            meta_addr // BLOCK,
            0,
            b"",
            b"",
            FEATURE_INCOMPAT,
            0,
            len(blobs),
            DEVT_SLOTOFF,
        )
        extended = struct.pack(
            "<QQIIQQQI",
            flags,
            blob_table_offset,
            blob_table_size,
            settings.chunk_size,
            self.chunk_table_offset,
            chunk_table_size,
            prefetch_offset,
            4 * len(prefetch),
        )
        self.superblock = superblock, extended

    def nid(self, inode: Inode) -> int:
        return (self.records[id(inode)].position - self.meta_addr) // 32

    def write(self, out: Writable) -> None:
        """The whole bootstrap, in one sequential pass: `size` bytes."""
        sink = _Sink(out)
        superblock, extended = self.superblock
        if self.meta_addr:
            sink.write(self.header[:SB_OFFSET])
            sink.write(superblock)
            sink.skip_to(EXT_SB_OFFSET)
            sink.write(extended)
            sink.write(self.header[sink.position :])
        else:
            sink.skip_to(SB_OFFSET)
            sink.write(superblock)
            sink.skip_to(EXT_SB_OFFSET)
            sink.write(extended)
        for record in self.order:
            sink.skip_to(record.position)
            sink.write(self._inode_bytes(record))
        for record in self.order:
            if record.plain_blocks:
                sink.skip_to(record.data_block * BLOCK)
                sink.write(self._content(record)[: record.plain_blocks * BLOCK])
        sink.skip_to(self.chunk_table_offset)
        for row in self.chunk_rows:
            sink.write(row)
        sink.skip_to(self.size)
        sink.flush()

    def getvalue(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    def _content(self, record: _Record) -> bytes:
        if record.inode.is_dir:
            return _dirent_data(record, self.parents, self.nid)
        return record.inode.target

    def _inode_bytes(self, record: _Record) -> bytes:
        inode = record.inode
        if inode.is_reg:
            i_u = CHUNK_FORMAT_INDEXES | (self.chunk_bits - 12)
        elif inode.is_dir or inode.is_symlink:
            i_u = record.data_block
        else:
            i_u = inode.rdev
        icount = (len(record.xattrs) - 12) // 4 + 1 if record.xattrs else 0
        head = struct.pack(
            "<HHHHQIIIIQII",
            INODE_EXTENDED | record.layout << 1,
            icount,
            inode.mode,
            0,
            record.size,
            i_u,
            record.ino,
            inode.uid,
            inode.gid,
            inode.mtime,
            1 if inode.implicit else 0,
            record.nlink,
        )
        body = head + bytes(INODE_SIZE - len(head)) + record.xattrs
        if inode.is_reg:
            if not inode.chunks:
                return body
            body += bytes(align(len(body), 8) - len(body))
            blob_index = self.blob_index
            return body + b"".join(
                struct.pack(
                    "<HHI",
                    chunk.index & 0xFFFF,
                    (blob_index[chunk.blob_id] + 1) & 0xFF | ((chunk.index >> 16) & 0xFF) << 8,
                    chunk.uncompressed_offset // BLOCK,
                )
                for chunk in inode.chunks
            )
        if record.layout == LAYOUT_FLAT_INLINE:
            body += self._content(record)[record.plain_blocks * BLOCK :]
        return body


class _Sink:
    """Sequential writes with zero-filled gaps, in 1 MiB pieces."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.position = 0
        self.buffer = bytearray()

    def write(self, data: bytes | bytearray) -> None:
        self.buffer += data
        self.position += len(data)
        if len(self.buffer) >= 1 << 20:
            self.flush()

    def skip_to(self, position: int) -> None:
        if position < self.position:
            raise AssertionError(f"bootstrap layout overlaps at {position}")
        self.write(bytes(position - self.position))

    def flush(self) -> None:
        self.out.write(bytes(self.buffer))
        self.buffer = bytearray()


def _dirent_data(record: _Record, parents: dict[int, Inode], nid: Callable[[Inode], int]) -> bytes:
    directory = record.inode
    targets = {b".": directory, b"..": parents[id(directory)], **directory.children}
    out = bytearray()
    for number, names in enumerate(record.blocks):
        block = bytearray()
        name_offset = DIRENT_SIZE * len(names)
        name_bytes = b"".join(names)
        for name in names:
            target = targets[name]
            file_type = _FILE_TYPES[stat.S_IFMT(target.mode)]
            block += struct.pack("<QHBB", nid(target), name_offset, file_type, 0)
            name_offset += len(name)
        block += name_bytes
        if number < len(record.blocks) - 1:
            block += b"\0" * (BLOCK - len(block))
        out += block
    return bytes(out)


class _Digesting:
    def __init__(self, target: Writable) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.target.write(data)


def store_bootstrap(bootstrap: Bootstrap, out: Writable) -> tuple[str, int, bytes]:
    """Write the bootstrap zstd-compressed (or raw when that is not smaller) to `out`, spooling the
    compressed form to a temp file: (compressor, stored size, sha256 of the bootstrap)."""
    with tempfile.TemporaryFile() as packed:
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(
            packed, size=bootstrap.size, closefd=False
        ) as stream:
            digesting = _Digesting(stream)
            bootstrap.write(digesting)
        stored = packed.tell()
        if stored < bootstrap.size:
            packed.seek(0)
            while piece := packed.read(1 << 20):
                out.write(piece)
            return "zstd", stored, digesting.sha256.digest()
    bootstrap.write(out)
    return "none", bootstrap.size, digesting.sha256.digest()
