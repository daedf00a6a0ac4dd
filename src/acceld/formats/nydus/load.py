"""Read a RAFS v6 bootstrap back into a RAFS tree: what merge and the chunk dictionary need.

This is the writer's own loader (per-layer bootstraps for merge, a dictionary image's bootstrap),
not the strict validator: it checks only what it relies on.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
from array import array
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import IO, Any

from acceld.formats.driver import FormatError
from acceld.formats.nydus.layout import (
    BLOB_ENTRY_SIZE,
    BLOB_INLINED_FS_META,
    BLOB_ZRAN,
    BLOCK,
    CHUNK_RECORD_SIZE,
    DIRENT_SIZE,
    EROFS_MAGIC,
    EXT_SB_OFFSET,
    FLAG_COMPRESSION,
    FLAG_HASH,
    INODE_EXTENDED,
    INODE_SIZE,
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    MAX_CHUNKS_PER_BLOB,
    PLACEHOLDER_BLOB_ID,
    SB_OFFSET,
    XATTR_PREFIX_OF_INDEX,
    BlobInfo,
    align,
)
from acceld.formats.nydus.tree import (
    CHUNK_KEY,
    CHUNK_RECORD,
    NO_XATTRS,
    BlobRefs,
    Children,
    Chunk,
    Chunks,
    Inode,
    Node,
    chunks_of,
    file_record,
    is_plain,
    pack_record,
)

_MAX_SHARED_INTS = 1 << 16
_UNNAMED = 1 << 63  # a chunk table row that no inode's chunk index can name


@dataclass
class LoadedBootstrap:
    root: Inode
    refs: BlobRefs  # of the tree's file records
    blobs: list[BlobInfo]
    chunk_size: int
    compressor: str
    digester: str


def _flag_name(flags: int, table: dict[str, int], what: str) -> str:
    names = [name for name, bit in table.items() if flags & bit]
    if len(names) != 1:
        raise FormatError(f"bootstrap flags {flags:#x} name {len(names)} {what}s")
    return names[0]


_PAGE_BITS = 16
_MAGIC = struct.Struct("<I")
_U16 = struct.Struct("<H")
_EXT_SB = struct.Struct("<QQIIQQ")  # flags, blob table offset, size, chunk size, chunk table offset, size
_EXTENDED = struct.Struct("<HHHHQIIIIQII")  # an extended inode (its used 48 bytes)
_COMPACT = struct.Struct("<HHHHIIIIHH")
_XATTR_ENTRY = struct.Struct("<BBH")
_DIRENT = struct.Struct("<QH2x")  # a dirent's nid and name offset
_CHUNK_INDEX = struct.Struct("<HH")  # the parts of a chunk index naming a chunk: blob and CI index
_CHUNK_ROW = struct.Struct("<32sIIIIQQQI")
_CHUNK_ROW_NAME = struct.Struct("<32xI36xI4x")  # a chunk table row's blob and CI index
_ROW_BLOB_WORD, _ROW_INDEX_WORD = 32 // 4, 72 // 4  # where they are, in u32 words
_CHUNK_ROWS_READ = CHUNK_RECORD_SIZE * 1024  # the chunk table is scanned in pieces of this size
_CHUNK_TABLE_HELD = 1 << 20  # the largest chunk table held in memory while loading


class _Pages:
    """Random reads of a bootstrap file through a few cached 64 KiB pages: the loader walks it
    roughly in file order and never needs it whole."""

    PAGE = 1 << _PAGE_BITS
    KEPT = 16

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.size = handle.seek(0, io.SEEK_END)
        self.pages: OrderedDict[int, bytes] = OrderedDict()
        try:
            self.fd: int | None = handle.fileno()
        except (OSError, io.UnsupportedOperation):
            self.fd = None

    def read_at(self, offset: int, size: int) -> bytes:
        """A small random read, past the page cache (the chunk table is read in no order)."""
        if self.fd is not None:
            return os.pread(self.fd, size, offset)
        self.handle.seek(offset)
        return self.handle.read(size)

    def page(self, number: int) -> bytes:
        page = self.pages.get(number)
        if page is None:
            self.handle.seek(number * self.PAGE)
            page = self.pages[number] = self.handle.read(self.PAGE)
            if len(self.pages) > self.KEPT:
                self.pages.popitem(last=False)
        return page

    def __getitem__(self, where: slice) -> bytes:
        start, stop = where.start, min(where.stop, self.size)
        if start >= stop:
            return b""
        first, last = start // self.PAGE, (stop - 1) // self.PAGE
        if first == last:
            base = first * self.PAGE
            return self.page(first)[start - base : stop - base]
        joined = b"".join(self.page(number) for number in range(first, last + 1))
        return joined[start - first * self.PAGE : stop - first * self.PAGE]

    def window(self, offset: int, size: int) -> tuple[bytes, int]:
        """(buffer, start): the `size` bytes at `offset` are `buffer[start : start + size]` (a
        cached page when they lie within one: read in place)."""
        end = offset + size
        if end > self.size or offset < 0:
            raise FormatError(f"truncated or corrupt RAFS v6 bootstrap: nothing at offset {offset}")
        number = offset >> _PAGE_BITS
        if (end - 1) >> _PAGE_BITS == number:
            return self.pages.get(number) or self.page(number), offset - (number << _PAGE_BITS)
        return self[offset:end], 0

    def unpack(self, layout: struct.Struct, offset: int) -> tuple[Any, ...]:
        return layout.unpack_from(*self.window(offset, layout.size))


class _Whole(_Pages):
    """A bootstrap held in memory (an `io.BytesIO`): read in place, without pages."""

    def __init__(self, handle: io.BytesIO) -> None:
        super().__init__(handle)
        self.whole = handle.getvalue()

    def read_at(self, offset: int, size: int) -> bytes:
        return self.whole[offset : offset + size]

    def __getitem__(self, where: slice) -> bytes:
        return self.whole[where.start : where.stop]

    def window(self, offset: int, size: int) -> tuple[bytes, int]:
        if offset + size > self.size or offset < 0:
            raise FormatError(f"truncated or corrupt RAFS v6 bootstrap: nothing at offset {offset}")
        return self.whole, offset


class _Loader:
    def __init__(self, handle: IO[bytes], own_blob_id: str | None, refs: BlobRefs) -> None:
        self.refs = refs
        data = self.data = _Whole(handle) if isinstance(handle, io.BytesIO) else _Pages(handle)
        self.whole = data.whole if isinstance(data, _Whole) else None
        if data.size < 2 * BLOCK or data.unpack(_MAGIC, SB_OFFSET)[0] != EROFS_MAGIC:
            raise FormatError("not a RAFS v6 bootstrap (no EROFS superblock)")
        self.root_nid = data.unpack(_U16, SB_OFFSET + 14)[0]
        self.meta_addr = data.unpack(_MAGIC, SB_OFFSET + 40)[0] * BLOCK
        (self.flags, blob_off, blob_size, self.chunk_size, chunk_off, chunk_size) = data.unpack(
            _EXT_SB, EXT_SB_OFFSET
        )
        self.blobs: list[BlobInfo] = []
        for offset in range(blob_off, blob_off + blob_size, BLOB_ENTRY_SIZE):
            try:
                _, blob = BlobInfo.unpack(data[offset : offset + BLOB_ENTRY_SIZE])
            except ValueError as exc:
                raise FormatError(str(exc)) from exc
            if own_blob_id is not None and blob.blob_id in (PLACEHOLDER_BLOB_ID, own_blob_id):
                blob = replace(blob, blob_id=own_blob_id, features=blob.features & ~BLOB_INLINED_FS_META)
            self.blobs.append(blob)
        # what a file record's chunk key says of each blob: its ref and whether it is zran
        self.blob_refs = [refs.number(blob.blob_id) for blob in self.blobs]
        self.blob_zran = [bool(blob.features & BLOB_ZRAN) for blob in self.blobs]
        self.chunk_off = chunk_off
        # a small chunk table is held while loading: its rows are read in no order, each with a
        # system call otherwise
        self.held_rows: bytes | None = None
        if chunk_size <= _CHUNK_TABLE_HELD:
            self.held_rows = data.read_at(chunk_off, chunk_size)
            if len(self.held_rows) != chunk_size:
                raise FormatError("truncated or corrupt RAFS v6 bootstrap: chunk table cut short")
        self.chunk_rows = self._chunk_rows(chunk_off, chunk_size)
        self.inodes: dict[int, Inode] = {}
        self.ints: dict[int, int] = {}

    def _chunk_rows(self, start: int, size: int) -> list[array[int] | dict[int, int]]:
        """Per blob, the chunk table row of each CI index (-1 or absent: none); rows are read
        when an inode names them, so no chunk objects are held for the whole table."""
        if self.held_rows is not None:
            one_blob = self._one_blob_rows(self.held_rows)
            if one_blob is not None:
                return one_blob
        keys = array("Q")  # blob index << 24 | CI index, by row
        counts, highest = [0] * len(self.blobs), [-1] * len(self.blobs)
        pieces = (
            self.data.read_at(piece, min(_CHUNK_ROWS_READ, start + size - piece))
            for piece in range(start, start + size, _CHUNK_ROWS_READ)
        )
        for raw in pieces if self.held_rows is None else (self.held_rows,):
            if len(raw) % CHUNK_RECORD_SIZE:
                raise FormatError("truncated or corrupt RAFS v6 bootstrap: chunk table cut short")
            for blob_index, index in _CHUNK_ROW_NAME.iter_unpack(raw):
                if blob_index >= len(self.blobs):
                    raise FormatError(f"chunk table entry names blob {blob_index}, beyond the blob table")
                if index >= MAX_CHUNKS_PER_BLOB:
                    keys.append(_UNNAMED)
                    continue
                counts[blob_index] += 1
                if index > highest[blob_index]:
                    highest[blob_index] = index
                keys.append(blob_index << 24 | index)
        # an array unless a few chunks have high indexes
        tables: list[array[int] | dict[int, int]] = [
            array("i", [-1]) * (top + 1) if top < 4 * count + 4096 else {}
            for top, count in zip(highest, counts, strict=True)
        ]
        for row, key in enumerate(keys):
            if key != _UNNAMED:
                tables[key >> 24][key & 0xFFFFFF] = row
        return tables

    def _one_blob_rows(self, raw: bytes) -> list[array[int] | dict[int, int]] | None:
        """`_chunk_rows` of a held table whose rows all name one blob (a layer's own, usually):
        its rows by CI index in one dict, made without a loop in Python; None for other tables."""
        words = array("I")
        if words.itemsize != 4 or not raw or len(raw) % CHUNK_RECORD_SIZE:
            return None
        words.frombytes(raw)
        if sys.byteorder != "little":
            words.byteswap()
        per_row = CHUNK_RECORD_SIZE // 4
        blob_indexes = set(words[_ROW_BLOB_WORD::per_row])
        indexes = words[_ROW_INDEX_WORD::per_row]
        if len(blob_indexes) != 1 or max(indexes) >= MAX_CHUNKS_PER_BLOB:
            return None
        (blob_index,) = blob_indexes
        if blob_index >= len(self.blobs):
            return None
        tables: list[array[int] | dict[int, int]] = [{} for _ in self.blobs]
        tables[blob_index] = dict(zip(indexes, range(len(indexes)), strict=True))  # (the last row wins)
        return tables

    def chunk_row(self, blob_index: int, index: int) -> tuple[Any, ...]:
        """The chunk table row of (blob, CI index), last row wins, unpacked."""
        table = self.chunk_rows[blob_index] if 0 <= blob_index < len(self.chunk_rows) else {}
        row = (
            table.get(index, -1) if isinstance(table, dict) else (table[index] if index < len(table) else -1)
        )
        if row < 0:
            raise FormatError(f"chunk {index} of blob {blob_index} is missing from the chunk table")
        if self.held_rows is not None:
            return _CHUNK_ROW.unpack_from(self.held_rows, CHUNK_RECORD_SIZE * row)
        raw = self.data.read_at(self.chunk_off + CHUNK_RECORD_SIZE * row, CHUNK_RECORD_SIZE)
        if len(raw) != CHUNK_RECORD_SIZE:
            raise FormatError("truncated or corrupt RAFS v6 bootstrap: chunk table cut short")
        return _CHUNK_ROW.unpack_from(raw)

    def chunk(self, blob_index: int, index: int) -> Chunk:
        digest, _, _flags, csize, usize, coff, uoff, _foff, _ = self.chunk_row(blob_index, index)
        blob_id = self.blobs[blob_index].blob_id
        return Chunk(digest, blob_id, index, coff, csize, uoff, usize, self.blob_zran[blob_index])

    def chunk_address(self, body: int) -> tuple[int, int]:
        """(blob index, CI index) of the chunk index at `body` (§5.6)."""
        lo, hi = self.data.unpack(_CHUNK_INDEX, body)
        return (hi & 0xFF) - 1, lo | (hi >> 8) << 16

    def plain_record(
        self, buffer: bytes, at: int, body: int, size: int, mode: int, uid: int, gid: int, mtime: int
    ) -> bytes | None:
        """The file record of a regular file of one name and no xattrs, when it is plain (of at
        most one chunk, whose key is whole): made without an inode or chunk object. Its chunk
        index is at `body`, `buffer[at:]` when the window read for the inode holds it."""
        if not size:
            return pack_record(b"", mode, uid, gid, mtime)
        if size > self.chunk_size:
            return None
        if at + 4 <= len(buffer):
            lo, hi = _CHUNK_INDEX.unpack_from(buffer, at)
            blob_index, index = (hi & 0xFF) - 1, lo | (hi >> 8) << 16
        else:
            blob_index, index = self.chunk_address(body)
        digest, _, _flags, csize, usize, coff, uoff, _foff, _ = self.chunk_row(blob_index, index)
        ref = self.blob_refs[blob_index]
        if usize != size or ref in self.refs.tables:
            return None
        zran = self.blob_zran[blob_index]
        if mtime <= 0xFFFFFFFF:  # (almost always: packed at once)
            return CHUNK_RECORD.pack(
                digest, index, coff, csize, usize, uoff, zran, ref, mode, uid, gid, mtime
            )
        key = CHUNK_KEY.pack(digest, index, coff, csize, usize, uoff, zran, ref)
        return pack_record(key, mode, uid, gid, mtime)

    def shared(self, value: int) -> int:
        """One int object per distinct mode, owner or mtime (while there are few)."""
        if len(self.ints) < _MAX_SHARED_INTS:
            return self.ints.setdefault(value, value)
        return self.ints.get(value, value)

    def inode(self, nid: int, depth: int = 0) -> Node:
        known = self.inodes.get(nid)
        if known is not None:
            return known
        if depth > 4096:
            raise FormatError("bootstrap directory tree is too deep or cyclic")
        pos = self.meta_addr + 32 * nid
        whole = self.whole
        if whole is not None and pos + INODE_SIZE <= len(whole):  # (`window` without a call)
            buffer, at = whole, pos
        else:
            buffer, at = self.data.window(pos, INODE_SIZE if pos + INODE_SIZE <= self.data.size else 32)
        if buffer[at] & INODE_EXTENDED:
            i_format, icount, mode, _, size, i_u, _ino, uid, gid, mtime, nsec, nlink = _EXTENDED.unpack_from(
                buffer, at
            )
            inode_size = INODE_SIZE
        else:
            i_format, icount, mode, nlink, size, _, i_u, _ino, uid, gid = _COMPACT.unpack_from(buffer, at)
            mtime, nsec, inode_size = 0, 0, 32
        layout = (i_format >> 1) & 0x7
        if nlink == 1 and not icount and layout == LAYOUT_CHUNK_BASED and mode & 0o170000 == stat.S_IFREG:
            # (a chunk based inode without xattrs: its chunk indexes follow it, 8-byte aligned)
            record = self.plain_record(buffer, at + inode_size, pos + inode_size, size, mode, uid, gid, mtime)
            if record is not None:
                return record
        xattr_size = 12 + 4 * (icount - 1) if icount else 0
        shared = self.shared
        node = Inode(mode=shared(mode), uid=shared(uid), gid=shared(gid), mtime=shared(mtime), size=size)
        node.implicit = stat.S_ISDIR(mode) and nsec == 1
        if nlink != 1 or stat.S_ISDIR(mode):
            self.inodes[nid] = node  # hardlinks share one inode; a file of one name needs no lookup
        node.xattrs = self.xattrs(pos + inode_size, xattr_size)
        body = pos + inode_size + xattr_size
        if stat.S_ISREG(mode):
            if layout != LAYOUT_CHUNK_BASED:
                raise FormatError(f"nid {nid}: regular file is not chunk based")
            node.chunks = self.chunks(body, size)
            if nlink == 1 and is_plain(node):
                return file_record(node, self.refs)
        elif stat.S_ISDIR(mode):
            children = node.children = Children()
            previous = b""
            records: list[tuple[bytes, bytes]] = []  # added to the table together
            for name, child_nid in self.dirents(self.content(layout, size, i_u, body)):
                if name != b"." and name != b"..":
                    child = self.inode(child_nid, depth + 1)
                    if name > previous:  # dirents are sorted: a new name
                        if isinstance(child, bytes):
                            records.append((name, child))
                        else:
                            children.insert(name, child)
                        previous = name
                    else:
                        children.add_records(records)
                        records = []
                        children[name] = child
            children.add_records(records)
        elif stat.S_ISLNK(mode):
            node.target = self.content(layout, size, i_u, body)
        else:
            node.rdev = i_u
        return node

    def xattrs(self, start: int, size: int) -> dict[bytes, bytes]:
        if not size:
            return NO_XATTRS
        if self.data[start + 4 : start + 5] != b"\0":
            raise FormatError("shared xattrs are not supported")
        result: dict[bytes, bytes] = {}
        pos, end = start + 12, start + size
        while pos < end:
            name_len, index, value_size = self.data.unpack(_XATTR_ENTRY, pos)
            prefix = XATTR_PREFIX_OF_INDEX.get(index)
            if prefix is None:
                raise FormatError(f"unknown xattr prefix index {index}")
            name = prefix + self.data[pos + 4 : pos + 4 + name_len]
            result[name] = self.data[pos + 4 + name_len : pos + 4 + name_len + value_size]
            pos += (4 + name_len + value_size + 3) & ~3
        return result

    def content(self, layout: int, size: int, i_u: int, body: int) -> bytes:
        if layout == LAYOUT_FLAT_INLINE:
            full = size - size % BLOCK
            return self.data[i_u * BLOCK : i_u * BLOCK + full] + self.data[body : body + size % BLOCK]
        return self.data[i_u * BLOCK : i_u * BLOCK + size]

    def chunks(self, body: int, size: int) -> Chunks:
        pos = align(body, 8)
        result = []
        for _ in range(-(-size // self.chunk_size)):
            result.append(self.chunk(*self.chunk_address(pos)))
            pos += 8
        return chunks_of(result)

    @staticmethod
    def dirents(data: bytes) -> list[tuple[bytes, int]]:
        entries: list[tuple[bytes, int]] = []
        for start in range(0, len(data), BLOCK):
            block = data[start : start + BLOCK]
            count = _U16.unpack_from(block, 8)[0] // DIRENT_SIZE  # the first name's offset
            fields = list(_DIRENT.iter_unpack(block[: DIRENT_SIZE * count]))
            ends = [name_off for _, name_off in fields[1:]]
            ends.append(len(block))
            entries += [
                (block[name_off:name_end].rstrip(b"\0"), nid)
                for (nid, name_off), name_end in zip(fields, ends, strict=False)  # (ends: one more)
            ]
        return entries


def load_bootstrap(
    handle: IO[bytes], own_blob_id: str | None = None, refs: BlobRefs | None = None
) -> LoadedBootstrap:
    """Parse the bootstrap file `handle`; with `own_blob_id`, a per-layer bootstrap's placeholder
    blob becomes that blob (with INLINED_FS_META dropped, as in a merged bootstrap). Its file
    records are numbered in `refs` (bootstraps to be merged share one)."""
    refs = BlobRefs() if refs is None else refs
    try:
        loader = _Loader(handle, own_blob_id, refs)
        root = loader.inode(loader.root_nid)
        compressor = _flag_name(loader.flags, FLAG_COMPRESSION, "compressor")
        digester = _flag_name(loader.flags, FLAG_HASH, "digester")
    except (struct.error, IndexError) as exc:
        raise FormatError(f"truncated or corrupt RAFS v6 bootstrap: {exc}") from exc
    if not isinstance(root, Inode) or not root.is_dir:
        raise FormatError("bootstrap root is not a directory")
    return LoadedBootstrap(root, refs, loader.blobs, loader.chunk_size, compressor, digester)
