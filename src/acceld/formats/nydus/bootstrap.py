"""Serialise a RAFS tree into a RAFS v6 bootstrap (§5): an EROFS image whose files live in blobs.

Layout: superblock, extended superblock, device table, blob table, prefetch table, an empty
block, then inodes (root = nid 128) with inline xattrs, inline directory/symlink tails and chunk
indexes, then whole data blocks of large directories and symlinks, then the chunk table.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import stat
import struct
import tempfile
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
from acceld.formats.nydus.tree import (
    CHUNK_KEY,
    CHUNK_KEY_SIZE,
    BlobRefs,
    Children,
    Chunk,
    Inode,
    chunk_key,
    is_dir,
    lookup_parent,
)

_FILE_TYPES = {  # by stat.S_IFMT
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


def dirent_blocks(names: Sequence[bytes]) -> list[int]:
    """Where sorted names are split into 4 KiB dirent blocks, an entry never straddling blocks
    (§5.7): the index of each block's first name, and `len(names)` last."""
    starts = [0]
    used = 0
    for number, name in enumerate(names):
        need = DIRENT_SIZE + len(name)
        if used + need > BLOCK:
            starts.append(number)
            used = 0
        used += need
    starts.append(len(names))
    return starts


def dirent_size(names: Sequence[bytes]) -> int:
    """The size of the dirent data of sorted names: whole blocks but the last."""
    size = DIRENT_SIZE * len(names) + sum(map(len, names))
    if size <= BLOCK:  # one block (most directories)
        return size
    starts = dirent_blocks(names)
    last = names[starts[-2] :]
    return BLOCK * (len(starts) - 2) + DIRENT_SIZE * len(last) + sum(map(len, last))


class _Shape:
    """Layout facts of an inode that is not a plain regular file or device: a directory, a
    symlink, or any inode with xattrs. Plain files (most of a layer) need none of them."""

    __slots__ = ("data_block", "layout", "plain_blocks", "size", "tail", "xattrs")

    def __init__(self, inode: Inode) -> None:
        self.xattrs = pack_xattrs(inode.xattrs) if inode.xattrs else b""
        self.size = inode.size
        self.layout = LAYOUT_FLAT_PLAIN
        self.plain_blocks = 0
        self.tail = 0
        self.data_block = 0
        kind = stat.S_IFMT(inode.mode)
        if kind == stat.S_IFREG:
            self.layout = LAYOUT_CHUNK_BASED
            return
        if kind == stat.S_IFDIR:
            # the names are listed again when written: kept, they would be a list slot per
            # entry of the image for the whole layout
            children = inode.children
            self.size = DIRENT_SIZE * (len(children) + 2) + children.name_bytes() + len(b"." + b"..")
            if self.size > BLOCK:  # more than one block (unlike most directories): names listed
                self.size = dirent_size(_dirent_names(children))
        elif kind == stat.S_IFLNK:
            self.size = len(inode.target)
        else:
            self.size = 0
            return
        tail = self.size % BLOCK
        if tail and INODE_SIZE + len(self.xattrs) + tail <= BLOCK:
            self.layout, self.tail, self.plain_blocks = LAYOUT_FLAT_INLINE, tail, self.size // BLOCK
        else:
            self.plain_blocks = -(-self.size // BLOCK)


def _dirent_names(children: Children) -> list[bytes]:
    """A directory's dirent names in order: its children's, "." and ".."."""
    names = children.sorted_names()
    bisect.insort(names, b".")
    bisect.insort(names, b"..")
    return names


def _needs_shape(inode: Inode) -> bool:
    return bool(inode.xattrs) or stat.S_IFMT(inode.mode) in (stat.S_IFDIR, stat.S_IFLNK)


def _head_size(shape: _Shape | None) -> int:
    """Bytes that must stay within one block: inode, xattrs and an inline tail."""
    return INODE_SIZE if shape is None else INODE_SIZE + len(shape.xattrs) + shape.tail


def _record_size(inode: Inode, shape: _Shape | None) -> int:
    if inode.is_reg:
        xattrs = 0 if shape is None else len(shape.xattrs)
        return align(INODE_SIZE + xattrs, 8) + 8 * len(inode.chunks)
    return _head_size(shape)


class _Order:
    """i_ino numbering (§5.6) and the placement order, in parallel arrays: `inodes[i]` has
    `ino[i]` and `nlink[i]`, and `inodes[i].serial == i`. A file record's entry is its
    directory's `Children`, with its row there in `rows[i]` (records have no serial: see
    `child_serials`)."""

    def __init__(self, root: Inode) -> None:
        root.serial = 0
        self.inodes: list[Inode | Children] = [root]
        self.rows = array("I", [0])
        self.ino = array("I", [1])  # (an image has far fewer than 2^32 names)
        self.nlink = array("I", [0])
        self.parents = {id(root): root}  # directories only
        self.first_child: dict[int, int] = {}  # a directory's serial: the first serial placed in it
        self.counter = 1
        self._visit(root)
        for serial in self.first_child:  # every directory
            directory = self.inodes[serial]
            if isinstance(directory, Inode):
                self.nlink[serial] = 2 + sum(1 for c in directory.children.inodes() if is_dir(c))

    def placed(self, inode: Inode) -> bool:
        serial = inode.serial
        return 0 <= serial < len(self.inodes) and self.inodes[serial] is inode

    def _place(self, inode: Inode, ino: int) -> None:
        inode.serial = len(self.inodes)
        self.inodes.append(inode)
        self.rows.append(0)
        self.ino.append(ino)
        self.nlink.append(0)

    def _visit(self, directory: Inode) -> None:
        children = directory.children
        dirs: list[Inode] = []
        dir_inos: dict[int, int] = {}
        inodes, rows, ino, nlink = self.inodes, self.rows, self.ino, self.nlink
        self.first_child[directory.serial] = len(inodes)
        counter = self.counter
        for _, child, row in children.sorted_entries(names_of_records=False):
            counter += 1
            if child is None:
                inodes.append(children)
                rows.append(row)
                ino.append(counter)
                nlink.append(1)
            elif self.placed(child):
                nlink[child.serial] += 1
            elif child.is_dir:
                dir_inos.setdefault(id(child), counter)
                dirs.append(child)
            else:
                self._place(child, counter)
                nlink[child.serial] = 1
        self.counter = counter
        for child in dirs:
            if not self.placed(child):
                self.parents[id(child)] = directory
                self._place(child, dir_inos[id(child)])
                self._visit(child)

    def child_serials(self, directory: Inode) -> dict[bytes, int]:
        return {name: serial for name, serial, _ in self.child_entries(directory)}

    def child_entries(self, directory: Inode) -> list[tuple[bytes, int, int]]:
        """(name, serial, EROFS file type) of each child of a placed directory in name order: files
        placed with it got consecutive serials in name order, the others carry theirs. (File
        records are regular files.)"""
        serial = self.first_child[directory.serial]
        children = directory.children
        inodes = children.inode_map()
        entries = []
        for name in children.sorted_names():
            child = inodes.get(name)
            if child is None:
                entries.append((name, serial, FT_REG))
                serial += 1
                continue
            if not child.is_dir and child.serial == serial:
                serial += 1
            entries.append((name, child.serial, _FILE_TYPES[stat.S_IFMT(child.mode)]))
        return entries


class Writable(Protocol):
    def write(self, data: bytes | bytearray, /) -> object: ...


class Bootstrap:
    """A bootstrap laid out in memory as records only; `write` streams its bytes (never held whole:
    a bootstrap of 1 M files is about 200 MB)."""

    def __init__(self, root: Inode, settings: BootstrapSettings, refs: BlobRefs) -> None:
        blobs = list(settings.blobs)
        self.blob_index = {blob.blob_id: i for i, blob in enumerate(blobs)}

        self.chunk_bits = settings.chunk_size.bit_length() - 1
        order = self.order = _Order(root)
        inodes = order.inodes
        shapes: dict[int, _Shape] = {}  # in serial order
        self.shapes = shapes

        blob_table_offset = align(DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * len(blobs), BLOCK)
        blob_table_size = BLOB_ENTRY_SIZE * len(blobs)
        prefetch_offset = blob_table_offset + blob_table_size
        prefetch_count_max = len(settings.prefetch_patterns) if blobs else 0
        # the prefetch table needs nids, which need meta_addr: reserve room for every pattern
        self.meta_addr = meta_addr = align(prefetch_offset + 4 * prefetch_count_max, BLOCK) if blobs else 0

        self.nids = nids = array("I")  # where each inode is: meta_addr + 32 * nid
        cursor = meta_addr + BLOCK
        rows = order.rows
        for serial, inode in enumerate(inodes):
            cursor = (cursor + 31) & ~31  # (`align` to a nid without a call: this runs once a file)
            if isinstance(inode, Children):  # a file record: an inode and at most one chunk index
                if cursor % BLOCK + INODE_SIZE > BLOCK:
                    cursor = align(cursor, BLOCK)
                nids.append((cursor - meta_addr) // 32)
                cursor += INODE_SIZE + (8 if inode.record_has_chunk(rows[serial]) else 0)
                continue
            shape = None
            if _needs_shape(inode):
                shape = shapes[serial] = _Shape(inode)
            head_size = _head_size(shape)
            if head_size <= BLOCK and cursor % BLOCK + head_size > BLOCK:
                cursor = align(cursor, BLOCK)
            nids.append((cursor - meta_addr) // 32)
            cursor += _record_size(inode, shape)
        block_cursor = align(cursor, BLOCK)
        for shape in shapes.values():  # in serial order: dicts keep insertion order
            if shape.plain_blocks:
                shape.data_block = block_cursor // BLOCK
                block_cursor += shape.plain_blocks * BLOCK

        if self.nid(0) != ROOT_NID:
            raise AssertionError("root inode must be nid 128")

        # the chunk table's rows are built while writing: here only which chunks, in which order
        self.refs = refs
        self.chunk_size = settings.chunk_size
        self.chunk_table = _table_order(order, refs, self.blob_index)
        # blob table index by blob ref (every chunk has its ref by now)
        self.ref_index = [self.blob_index.get(blob_id, -1) for blob_id in refs.ids]
        self.chunk_table_offset = align(block_cursor, BLOCK)
        chunk_table_size = CHUNK_RECORD_SIZE * len(self.chunk_table)
        self.size = align(self.chunk_table_offset + chunk_table_size, BLOCK)

        header = self.header = bytearray(meta_addr)
        prefetch: list[int] = []
        for pattern in settings.prefetch_patterns[:prefetch_count_max]:
            target = self._serial_of(root, pattern)
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

        has_xattr = settings.always_has_xattr or any(shape.xattrs for shape in shapes.values())
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
            order.counter,
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

    def nid(self, serial: int) -> int:
        return self.nids[serial]

    def _serial_of(self, root: Inode, path: str) -> int | None:
        found = lookup_parent(root, path)
        if found is None:
            return None
        parent, name = found
        if not name:
            return parent.serial
        return self.order.child_serials(parent).get(name)

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
        self._write_inodes(sink)
        for serial, shape in self.shapes.items():
            if shape.plain_blocks:
                sink.skip_to(shape.data_block * BLOCK)
                inode = self.order.inodes[serial]
                if not isinstance(inode, Inode):
                    raise AssertionError("a file record has no data blocks")
                sink.write(self._content(inode, shape, 0, shape.plain_blocks))
        self._write_chunk_table(sink)
        sink.skip_to(self.size)
        sink.flush()

    def _write_inodes(self, sink: _Sink) -> None:
        """Every inode at its nid; file records packed in place (most of them)."""
        order, refs, ref_index = self.order, self.refs, self.ref_index
        rows, ino, nlink, nids, meta_addr = order.rows, order.ino, order.nlink, self.nids, self.meta_addr
        chunk_format = CHUNK_FORMAT_INDEXES | (self.chunk_bits - 12)
        inodes = order.inodes
        serial = 0
        while serial < len(inodes):
            entry = inodes[serial]
            if isinstance(entry, Inode):
                sink.skip_to(meta_addr + 32 * nids[serial])
                sink.write(self._inode_bytes(serial, entry))
                serial += 1
                continue
            # a run of file records of one directory (placed in name order), packed into one
            # stretch of the buffer (at most _RECORDS_PACKED: the buffer grows by it past a piece)
            end = serial + 1
            while end < len(inodes) and inodes[end] is entry and end - serial < _RECORDS_PACKED:
                end += 1
            first = meta_addr + 32 * nids[serial]
            last_size = _FILE_WITH_CHUNK.size if entry.record_has_chunk(rows[end - 1]) else INODE_SIZE
            buffer, base = sink.reserve(first, meta_addr + 32 * nids[end - 1] + last_size - first)
            base += meta_addr - first
            records = entry.records_fields(rows[serial:end], refs)
            for record, (mode, uid, gid, mtime, index, ref, offset, size) in enumerate(records, serial):
                # (packed from locals, not from a tuple of the head's fields: this runs once a file)
                if ref >= 0:  # its chunk's index follows
                    _FILE_WITH_CHUNK.pack_into(
                        buffer, base + 32 * nids[record], _FILE_FORMAT, 0, mode, 0, size, chunk_format,
                        ino[record], uid, gid, mtime, 0, nlink[record], index & 0xFFFF,
                        (ref_index[ref] + 1) & 0xFF | ((index >> 16) & 0xFF) << 8, offset // BLOCK,
                    )  # fmt: skip
                else:
                    _FILE_HEAD.pack_into(
                        buffer, base + 32 * nids[record], _FILE_FORMAT, 0, mode, 0, size, chunk_format,
                        ino[record], uid, gid, mtime, 0, nlink[record],
                    )  # fmt: skip
            serial = end

    def _write_chunk_table(self, sink: _Sink) -> None:
        """The chunk table (§5.9). A chunk's file offset is where its first use is in its file:
        its table entry is that use."""
        order, refs, ref_index, chunk_size = self.order, self.refs, self.ref_index, self.chunk_size
        table = self.chunk_table
        piece = 256  # rows packed in one reserved stretch (small: the buffer grows by it past a piece)
        for first in range(0, len(table), piece):
            uses = table[first : first + piece]
            buffer, at = sink.reserve(
                self.chunk_table_offset + CHUNK_RECORD_SIZE * first, CHUNK_RECORD_SIZE * len(uses)
            )
            for use in uses:
                digest, index, coff, csize, usize, uoff, zran, ref = _use_fields(order, refs, use)
                _CHUNK_ROW.pack_into(
                    buffer,
                    at,
                    digest,
                    ref_index[ref],
                    CHUNK_COMPRESSED if zran or csize != usize else 0,
                    csize,
                    usize,
                    coff,
                    uoff,
                    (use & _USE_NUMBER) * chunk_size,
                    index,
                )
                at += CHUNK_RECORD_SIZE

    def getvalue(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    def _content(self, inode: Inode, shape: _Shape, first: int, stop: int) -> bytes:
        """Blocks `first` to `stop` (not included) of a directory's or symlink's data (the last
        one as long as it is, not padded)."""
        if inode.is_dir:
            entries = self.order.child_entries(inode)
            bisect.insort(
                entries, (b".", inode.serial, FT_DIR)
            )  # (names are distinct: only they are compared)
            bisect.insort(entries, (b"..", self.order.parents[id(inode)].serial, FT_DIR))
            return _dirent_data(entries, self.nids, first, stop)
        return inode.target[first * BLOCK : stop * BLOCK]

    def _inode_bytes(self, serial: int, inode: Inode) -> bytes:
        shape = self.shapes.get(serial)
        kind = stat.S_IFMT(inode.mode)
        xattrs = b"" if shape is None else shape.xattrs
        if kind == stat.S_IFREG:
            i_u = CHUNK_FORMAT_INDEXES | (self.chunk_bits - 12)
        elif shape is not None and (kind == stat.S_IFDIR or kind == stat.S_IFLNK):
            i_u = shape.data_block
        else:
            i_u = inode.rdev
        icount = (len(xattrs) - 12) // 4 + 1 if xattrs else 0
        if shape is not None:
            layout, size = shape.layout, shape.size
        else:
            layout, size = (
                (LAYOUT_CHUNK_BASED, inode.size) if kind == stat.S_IFREG else (LAYOUT_FLAT_PLAIN, 0)
            )
        body = _FILE_HEAD.pack(
            INODE_EXTENDED | layout << 1,
            icount,
            inode.mode,
            0,
            size,
            i_u,
            self.order.ino[serial],
            inode.uid,
            inode.gid,
            inode.mtime,
            1 if inode.implicit else 0,
            self.order.nlink[serial],
        )
        if xattrs:
            body += xattrs
        if kind == stat.S_IFREG:
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
        if shape is not None and shape.layout == LAYOUT_FLAT_INLINE:
            body += self._content(inode, shape, shape.plain_blocks, shape.plain_blocks + 1)
        return body


_FILE_FORMAT = INODE_EXTENDED | LAYOUT_CHUNK_BASED << 1
_RECORDS_PACKED = 256  # file records packed into one reserved stretch, at most
_FILE_HEAD = struct.Struct("<HHHHQIIIIQII16x")  # a whole 64-byte inode without xattrs
_FILE_WITH_CHUNK = struct.Struct(_FILE_HEAD.format + "HHI")  # and its one chunk index
_CHUNK_ROW = struct.Struct("<32sIIIIQQQI4x")
_DIRENT = struct.Struct("<QHBB")


_USE_CHUNK_BITS = 24  # a chunk use is serial << 24 | the chunk's number in its file (< 2^24)
_USE_NUMBER = (1 << _USE_CHUNK_BITS) - 1
_BUCKET_BITS = 12  # chunk uses are sorted in buckets by their digest's first 12 bits
_SORTED_TOGETHER = 512  # the keys of consecutive buckets sorted at once: at least this many


def _use_key(order: _Order, refs: BlobRefs, use: int) -> bytes:
    """The chunk key (`CHUNK_KEY_SIZE` bytes) of a chunk use."""
    serial = use >> _USE_CHUNK_BITS
    entry = order.inodes[serial]
    if isinstance(entry, Children):
        return entry.record_key(order.rows[serial], refs)
    chunks = entry.chunks
    return chunk_key(chunks if isinstance(chunks, Chunk) else chunks[use & _USE_NUMBER], refs)


def _use_fields(order: _Order, refs: BlobRefs, use: int) -> tuple[Any, ...]:
    """The chunk key of a chunk use, unpacked (`CHUNK_KEY`)."""
    serial = use >> _USE_CHUNK_BITS
    entry = order.inodes[serial]
    if isinstance(entry, Children):
        return entry.record_chunk_fields(order.rows[serial], refs)
    return CHUNK_KEY.unpack(_use_key(order, refs, use))


def _table_order(order: _Order, refs: BlobRefs, blob_index: dict[str, int]) -> array[int]:
    """Chunk table order (§5.9): by digest, then blob index; of chunks with the same digest and
    blob the first used stays. Returns the first use of each chosen chunk (use numbers are serial
    << 24 | the chunk's number in its file: they sort in placement order).

    The uses are spread over buckets by their digest's first bits (an array of use numbers each),
    then the distinct chunk keys of a few consecutive buckets are sorted at once: chunk keys exist
    for those buckets only, not for every chunk of the image."""
    buckets = [array("Q") for _ in range(1 << _BUCKET_BITS)]
    shift = 8 * 2 - _BUCKET_BITS
    rows = order.rows
    for serial, entry in enumerate(order.inodes):
        if isinstance(entry, Children):
            head = entry.record_head(rows[serial], refs)
            if head >= 0:
                buckets[head >> shift].append(serial << _USE_CHUNK_BITS)
        elif entry.chunks:
            for number, chunk in enumerate(entry.chunks):
                buckets[int.from_bytes(chunk.digest[:2], "big") >> shift].append(
                    serial << _USE_CHUNK_BITS | number
                )
    ref_index = [blob_index.get(blob_id, -1) for blob_id in refs.ids]
    table = array("Q")
    first_use: dict[bytes, int] = {}
    for number, bucket in enumerate(buckets):
        for use in bucket:  # in placement order: the first use of a key is its smallest
            first_use.setdefault(_use_key(order, refs, use), use)
        buckets[number] = array("Q")
        if len(first_use) >= _SORTED_TOGETHER or number == len(buckets) - 1:
            _extend_table(table, first_use, ref_index)
            first_use = {}
    return table


def _extend_table(table: array[int], first_use: dict[bytes, int], ref_index: list[int]) -> None:
    """Append the chosen chunks of a range of digests to `table`: their first uses by chunk key."""
    keys = sorted(first_use)
    if len({key[:32] for key in keys}) == len(keys):  # each digest in one chunk only: the usual case
        table.extend(map(first_use.__getitem__, keys))
        return
    start = 0
    while start < len(keys):
        digest = keys[start][:32]
        end = start + 1
        while end < len(keys) and keys[end].startswith(digest):
            end += 1
        if end - start == 1:
            table.append(first_use[keys[start]])
        else:
            # the same data in several blobs (or twice in one) is rare: resolved by blob and first use
            run = keys[start:end]
            blob_of = [ref_index[int.from_bytes(key[CHUNK_KEY_SIZE - 2 :], "little")] for key in run]
            ranked = sorted(range(len(run)), key=lambda n: (blob_of[n], first_use[run[n]]))
            table.extend(
                first_use[run[n]]
                for place, n in enumerate(ranked)
                if not place or blob_of[n] != blob_of[ranked[place - 1]]
            )
        start = end


_SINK_PIECE = 256 << 10


class _Sink:
    """Sequential writes with zero-filled gaps, in pieces of about `_SINK_PIECE` (each handed on
    as the buffer itself, not a copy: the buffer is a new one after)."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.position = 0
        self.buffer = bytearray()

    def write(self, data: bytes | bytearray) -> None:
        if len(self.buffer) >= _SINK_PIECE:
            self.flush()
        self.buffer += data
        self.position += len(data)

    def reserve(self, position: int, size: int) -> tuple[bytearray, int]:
        """Zeroed room for `size` bytes at `position` (at or past the end so far): the buffer and
        their offset in it, where the caller packs them before the next call."""
        gap = position - self.position
        if gap < 0:
            raise AssertionError(f"bootstrap layout overlaps at {position}")
        if len(self.buffer) >= _SINK_PIECE:
            self.flush()
        at = len(self.buffer) + gap
        self.buffer += bytes(gap + size)
        self.position = position + size
        return self.buffer, at

    def skip_to(self, position: int) -> None:
        self.reserve(position, 0)

    def flush(self) -> None:
        self.out.write(self.buffer)
        self.buffer = bytearray()


def _dirent_data(entries: Sequence[tuple[bytes, int, int]], nids: array[int], first: int, stop: int) -> bytes:
    """Dirent blocks `first` to `stop` (not included) of a directory from the (name, serial, file
    type) of each entry, "." and ".." too, in name order; the directory's last block unpadded."""
    names = [name for name, _, _ in entries]
    if DIRENT_SIZE * len(names) + sum(map(len, names)) <= BLOCK:
        starts = [0, len(names)]  # one block (most directories)
    else:
        starts = dirent_blocks(names)
    out = bytearray()
    pack_into = _DIRENT.pack_into
    for number in range(first, min(stop, len(starts) - 1)):
        start, end = starts[number], starts[number + 1]
        table = bytearray(DIRENT_SIZE * (end - start))
        name_offset = len(table)
        at = 0
        for name, serial, file_type in entries[start:end]:
            pack_into(table, at, nids[serial], name_offset, file_type, 0)
            name_offset += len(name)
            at += DIRENT_SIZE
        out += table
        out += b"".join(names[start:end])
        if number < len(starts) - 2:
            out += bytes(BLOCK - name_offset)
    return bytes(out)


class _Digesting:
    def __init__(self, target: Writable) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | bytearray) -> None:
        self.sha256.update(data)
        self.target.write(data)


def store_bootstrap(bootstrap: Bootstrap, out: Writable, workdir: Path) -> tuple[str, int, bytes]:
    """Write the bootstrap zstd-compressed (or raw when that is not smaller) to `out`, spooling the
    compressed form to a temp file in `workdir`: (compressor, stored size, sha256 of the bootstrap)."""
    with tempfile.TemporaryFile(dir=workdir) as packed:
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(
            packed, size=bootstrap.size, closefd=False
        ) as stream:
            digesting = _Digesting(stream)
            bootstrap.write(digesting)
        stored = packed.tell()
        if stored < bootstrap.size:
            packed.seek(0)
            while piece := packed.read(_SINK_PIECE):
                out.write(piece)
            return "zstd", stored, digesting.sha256.digest()
    bootstrap.write(out)
    return "none", bootstrap.size, digesting.sha256.digest()
