"""The in-memory RAFS tree: inodes with their chunks, shared between hardlink names.

A directory's `children` (a `Children`) map raw name bytes to nodes; hardlinks are the same
`Inode` object under several names. Most files of a layer are plain: regular, one name, no
xattrs, at most one chunk. Such a file is not an `Inode` but its packed record (`bytes`, see
`file_record`), and a directory keeps its plain files' names and records packed in one table:
a layer of a million small files would otherwise hold a million inode, chunk, name and record
objects.
Chunks refer to their blob by blob id (records by a number in the trees' `BlobRefs`), so
trees from different bootstraps can be merged before blob indexes are assigned.
"""

from __future__ import annotations

import stat
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from acceld.formats.driver import FormatError


class Chunk:
    """Where one chunk of file data lives (a CI entry of a blob) and what it contains.

    Its fields are packed in one bytes object: a layer of a million small files has a million chunks.
    A chunk is also the sequence of its one chunk, so a one-chunk file's inode holds the chunk itself
    as its `chunks` instead of a 1-tuple (48 bytes an entry less).
    """

    __slots__ = ("_record", "blob_id")
    _RECORD = struct.Struct("<32sIQIIQ?")

    @classmethod
    def from_packed(cls, packed: bytes, blob_id: str) -> Chunk:
        chunk = cls.__new__(cls)
        chunk._record, chunk.blob_id = packed, blob_id
        return chunk

    def __init__(
        self,
        digest: bytes,
        blob_id: str,
        index: int,  # CI index within the blob
        compressed_offset: int,
        compressed_size: int,
        uncompressed_offset: int,
        uncompressed_size: int,
        zran: bool = False,  # lives in a gzip layer, read through a zran context (always "compressed")
    ) -> None:
        self.blob_id = blob_id
        self._record = self.pack(
            digest, index, compressed_offset, compressed_size, uncompressed_offset, uncompressed_size, zran
        )

    @classmethod
    def pack(
        cls,
        digest: bytes,
        index: int,
        compressed_offset: int,
        compressed_size: int,
        uncompressed_offset: int,
        uncompressed_size: int,
        zran: bool = False,
    ) -> bytes:
        """`packed` of a chunk of these fields, without making one."""
        return cls._RECORD.pack(
            digest, index, compressed_offset, compressed_size, uncompressed_size, uncompressed_offset, zran
        )

    @property
    def packed(self) -> bytes:
        """The fields packed, digest first: sorting chunks by it sorts them by digest."""
        return self._record

    @property
    def digest(self) -> bytes:
        return self._record[:32]

    @property
    def index(self) -> int:
        return int.from_bytes(self._record[32:36], "little")

    @property
    def compressed_offset(self) -> int:
        return int.from_bytes(self._record[36:44], "little")

    @property
    def compressed_size(self) -> int:
        return int.from_bytes(self._record[44:48], "little")

    @property
    def uncompressed_size(self) -> int:
        return int.from_bytes(self._record[48:52], "little")

    @property
    def uncompressed_offset(self) -> int:
        return int.from_bytes(self._record[52:60], "little")

    @property
    def zran(self) -> bool:
        return self._record[60] != 0

    @property
    def compressed(self) -> bool:
        return self.zran or self.compressed_size != self.uncompressed_size

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Chunk]:
        yield self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and (self.blob_id, self._record) == (other.blob_id, other._record)

    def __hash__(self) -> int:
        return hash((self.blob_id, self._record))

    def __repr__(self) -> str:
        return (
            f"Chunk(digest={self.digest.hex()}, blob_id={self.blob_id!r}, index={self.index}, "
            f"compressed={self.compressed_offset}+{self.compressed_size}, "
            f"uncompressed={self.uncompressed_offset}+{self.uncompressed_size}, zran={self.zran})"
        )


PENDING_BLOB_ID = "pending"  # a placeholder's: its place in a blob is not decided yet

Chunks = tuple[Chunk, ...] | Chunk  # a file's chunks in order; a lone chunk stands for itself


def chunks_of(chunks: list[Chunk]) -> Chunks:
    return chunks[0] if len(chunks) == 1 else tuple(chunks)


class _Sealed(dict[Any, Any]):
    """The one empty mapping shared by every inode without children or xattrs: writing to it is a bug."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("the shared empty mapping of an inode is read-only")


NO_XATTRS: dict[bytes, bytes] = _Sealed()
OPAQUE_MARKER = b".wh..wh..opq"  # the OCI whiteout entry that makes its directory opaque

_FREE, _GONE = -1, -2  # index slots: never used, and a removed row's
_REMOVED = 0x8000  # set in a removed row's name length
_ROW_HEAD = struct.Struct("<HB")  # a table row's name and record lengths
_NAMES_COPIED = 64 << 10  # a table up to this size is copied whole to list its names


class Children:
    """A directory's entries by name: inodes in a dict, plain files' records packed in one table.

    A table row is its name length (u16, `_REMOVED` once removed), record length (u8), name and
    record, all rows in one bytearray; rows are found by an open-addressing index of row numbers
    keyed by the salted `hash` of the name, built on the first lookup it is needed for (names
    added in order and looked up past the last need none: a tar's or a bootstrap's usual case). A
    file costs its name and record bytes plus ~12 bytes instead of a name object, a record object
    and a dict slot (~190 bytes).
    """

    __slots__ = ("_data", "_in_order", "_last", "_live", "_nodes", "_slots", "_sorted", "_starts", "sealed")

    def __init__(self, sealed: bool = False) -> None:
        self._nodes: dict[bytes, Node] = {}
        self._data = bytearray()
        self._starts = array("I")  # where each row starts in `_data`
        self._slots = array("i")  # the index: empty until a lookup needs it
        self._live = 0  # rows not removed
        self._sorted: array[int] | None = None  # the rows in name order, once asked for
        self._in_order = True  # rows were added in name order (a tar's or a bootstrap's usual order)
        self._last = b""  # the name added last, while they were
        self.sealed = sealed  # the shared empty children of every non-directory

    def __len__(self) -> int:
        return len(self._nodes) + self._live

    def __bool__(self) -> bool:
        return bool(self._nodes) or self._live > 0

    def __iter__(self) -> Iterator[bytes]:
        yield from list(self._nodes)
        for row in self.rows():
            yield self.name(row)

    def __contains__(self, name: bytes) -> bool:
        return name in self._nodes or self.row(name) >= 0

    def __getitem__(self, name: bytes) -> Node:
        node = self.get(name)
        if node is None:
            raise KeyError(name)
        return node

    def get(self, name: bytes, default: Node | None = None) -> Node | None:
        node = self._nodes.get(name)
        if node is not None:
            return node
        row = self.row(name) if self._live else -1
        return default if row < 0 else self.record(row)

    def __setitem__(self, name: bytes, node: Node) -> None:
        if self.sealed:
            raise TypeError("the shared empty children of a non-directory are read-only")
        if isinstance(node, bytes):
            # a name is an inode's or a record's, never both
            if self._nodes.pop(name, None) is None and self._live:
                self._remove_row(name)
            self._add_row(name, node)
        else:
            if name not in self._nodes and self._live:
                self._remove_row(name)
            self._nodes[name] = node

    def settle(self, name: bytes, inode: Inode, refs: BlobRefs) -> None:
        """The child `name` becomes the file record of `inode` if it is still that plain file."""
        if self._nodes.get(name) is inode:
            del self._nodes[name]
            self._add_row(name, file_record(inode, refs))

    def insert(self, name: bytes, node: Node) -> None:
        """Add `name`, which is not among the children (the caller has just looked)."""
        if isinstance(node, bytes):
            self._add_row(name, node)
        else:
            self._nodes[name] = node

    def add_records(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Add the file records of names none of the children has, by (name, record)."""
        if self._slots:  # placed in the index one by one
            for name, record in records:
                self._add_row(name, record)
        else:
            self._append_rows(records)

    def pop(self, name: bytes, default: Node | None = None) -> Node | None:
        node = self._nodes.pop(name, None)
        if node is not None:
            return node
        record = self._remove_row(name) if self._live else None
        return default if record is None else record

    def clear(self) -> None:
        self._nodes = {}
        self._data = bytearray()
        self._starts = array("I")
        self._slots = array("i")
        self._live = 0
        self._sorted = None
        self._in_order, self._last = True, b""

    def take_records(self, other: Children) -> None:
        """Move every file record of `other` here (this has none yet): no row is copied."""
        if self._starts:
            raise AssertionError("records are taken only into a table without any")
        self._data, self._starts, self._slots = other._data, other._starts, other._slots
        self._live, self._sorted = other._live, other._sorted
        self._in_order, self._last = other._in_order, other._last
        other._data, other._starts, other._slots, other._live = bytearray(), array("I"), array("i"), 0
        other._sorted, other._in_order, other._last = None, True, b""

    def records_may_contain(self, piece: bytes) -> bool:
        """False when no record's name contains `piece` (True may be a false alarm)."""
        return self._live > 0 and self._data.find(piece) >= 0

    def items(self) -> Iterator[tuple[bytes, Node]]:
        yield from list(self._nodes.items())
        for row in self.rows():
            yield self.name(row), self.record(row)

    def values(self) -> Iterator[Node]:
        for _, node in self.items():
            yield node

    def inodes(self) -> Iterator[Node]:
        """The children that are inodes, not file records."""
        return iter(list(self._nodes.values()))

    def inode(self, name: bytes) -> Inode | None:
        """The child `name` if it is an inode (not a file record)."""
        node = self._nodes.get(name)
        return node if isinstance(node, Inode) else None

    def inode_map(self) -> dict[bytes, Inode]:
        """The children that are inodes by name (not to be changed)."""
        return self._nodes  # type: ignore[return-value]  # (records are kept in the table)

    def name_bytes(self) -> int:
        """The children's names' total length."""
        if self._live < len(self._starts):
            records = sum(len(self.name(row)) for row in self.rows())
        else:
            data = self._data
            records = sum(data[start] | data[start + 1] << 8 for start in self._starts)
        return records + sum(map(len, self._nodes))

    def sorted_names(self) -> list[bytes]:
        """Every child's name, in name order."""
        data, starts = self._data, self._starts
        if self._live == len(starts) and len(data) <= _NAMES_COPIED:
            raw = bytes(data)  # one copy of the table, its slices the names
            names = [raw[start + 3 : start + 3 + (raw[start] | raw[start + 1] << 8)] for start in starts]
        else:
            names = [self.name(row) for row in self.rows()]
        if self._nodes:
            names += self._nodes
        elif self._in_order:
            return names
        names.sort()
        return names

    def sorted_entries(self, names_of_records: bool = True) -> Iterator[tuple[bytes, Inode | None, int]]:
        """(name, inode or None, row of a record or -1) of every child in name order; without
        `names_of_records`, a record's name is b"" when it is not needed for the order."""
        order: Iterable[int]
        if self._in_order:
            order = self.rows()
        else:
            if self._sorted is None or len(self._sorted) != self._live:
                self._sorted = array("I", sorted(self.rows(), key=self.name))
            order = self._sorted
        nodes = self._nodes
        if not nodes and not names_of_records:
            for row in order:
                yield b"", None, row
            return
        names = sorted(nodes)
        taken = 0
        for row in order:
            name = self.name(row)
            while taken < len(names) and names[taken] < name:
                yield names[taken], nodes[names[taken]], -1  # type: ignore[misc]
                taken += 1
            yield name, None, row
        for name in names[taken:]:
            yield name, nodes[name], -1  # type: ignore[misc]

    # the table of file records, by row number

    def rows(self) -> Iterator[int]:
        """The rows of file records not removed, in the order they were added."""
        if self._live == len(self._starts):
            return iter(range(self._live))
        data, starts = self._data, self._starts
        return (row for row in range(len(starts)) if not data[starts[row] + 1] & (_REMOVED >> 8))

    # (rows read here are never removed ones: their name length is whole)

    def name(self, row: int) -> bytes:
        start = self._starts[row]
        data = self._data
        return bytes(data[start + 3 : start + 3 + (data[start] | data[start + 1] << 8)])

    def record(self, row: int) -> bytes:
        start = self._starts[row]
        data = self._data
        begin = start + 3 + (data[start] | data[start + 1] << 8)
        return bytes(data[begin : begin + data[start + 2]])

    def record_head(self, row: int, refs: BlobRefs) -> int:
        """The first two digest bytes of the chunk of a row's record, big-endian, without copying
        the record; -1 when it has no chunk."""
        start = self._starts[row]
        data = self._data
        size = data[start + 2]
        if size <= RECORD_ATTRS_MAX:
            return -1
        begin = start + 3 + (data[start] | data[start + 1] << 8)
        if _key_size(size) == INDEX_KEY_SIZE:
            index = int.from_bytes(data[begin : begin + 4], "little")
            return refs.tables[data[begin + 4] | data[begin + 5] << 8].head(index)
        return data[begin] << 8 | data[begin + 1]

    def record_key(self, row: int, refs: BlobRefs) -> bytes:
        """`record_key` of a row's record (which has a chunk), without copying the record."""
        start = self._starts[row]
        data = self._data
        begin = start + 3 + (data[start] | data[start + 1] << 8)
        if _key_size(data[start + 2]) == CHUNK_KEY_SIZE:
            return bytes(data[begin : begin + CHUNK_KEY_SIZE])
        index, ref = _INDEX_KEY.unpack_from(data, begin)
        return refs.tables[ref].packed(index) + bytes(data[begin + 4 : begin + INDEX_KEY_SIZE])

    def record_chunk_fields(self, row: int, refs: BlobRefs) -> tuple[Any, ...]:
        """`CHUNK_KEY` unpacked of a row's record (which has a chunk), read in place."""
        start = self._starts[row]
        data = self._data
        begin = start + 3 + (data[start] | data[start + 1] << 8)
        if _key_size(data[start + 2]) == CHUNK_KEY_SIZE:
            return CHUNK_KEY.unpack_from(data, begin)
        return CHUNK_KEY.unpack(self.record_key(row, refs))

    def record_fields(self, row: int, refs: BlobRefs) -> RecordFields:
        """`record_fields` of a row's record, without a copy."""
        start = self._starts[row]
        data = self._data
        return unpack_record(data, start + 3 + (data[start] | data[start + 1] << 8), data[start + 2], refs)

    def records_fields(self, rows: Iterable[int], refs: BlobRefs) -> Iterator[RecordFields]:
        """`record_fields` of the records of `rows`, read in place."""
        data, starts = self._data, self._starts
        for row in rows:
            start = starts[row]
            size = data[start + 2]
            begin = start + 3 + (data[start] | data[start + 1] << 8)
            if size == _WHOLE_RECORD_SIZE:  # (most records of a merged image: unpacked here)
                index, usize, offset, ref, mode, uid, gid, mtime = _WHOLE_RECORD.unpack_from(data, begin)
                yield mode, uid, gid, mtime, index, ref, offset, usize
            else:
                yield unpack_record(data, begin, size, refs)

    def record_has_chunk(self, row: int) -> bool:
        """`has_chunk` of a row's record, without a copy."""
        return self._data[self._starts[row] + 2] > RECORD_ATTRS_MAX

    def row(self, name: bytes) -> int:
        """The row of the file record `name`, or -1."""
        if not self._starts or (self._in_order and name > self._last):  # past every name of the table
            return -1
        if not self._slots:
            self._rebuild()
        slots = self._slots
        mask = len(slots) - 1
        slot = hash(name) & mask
        data, starts, size = self._data, self._starts, len(name)
        while (row := slots[slot]) != _FREE:
            if row >= 0:
                start = starts[row]
                if data[start] | data[start + 1] << 8 == size and data[start + 3 : start + 3 + size] == name:
                    return row
            slot = (slot + 1) & mask
        return -1

    def _add_row(self, name: bytes, record: bytes) -> None:
        indexed = bool(self._slots)
        if indexed and 3 * (len(self._starts) + 1) > 2 * len(self._slots):
            self._rebuild()
        self._append_rows(((name, record),))
        if indexed:
            self._place(name, len(self._starts) - 1)

    def _append_rows(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Append rows to the table (the caller places them in the index, if there is one)."""
        data, starts, in_order, last = self._data, self._starts, self._in_order, self._last
        added = 0
        for name, record in records:
            if len(record) > 0xFF or len(name) >= _REMOVED:
                raise ValueError("file record or name too long for a directory's table")
            starts.append(len(data))
            data += _ROW_HEAD.pack(len(name), len(record))
            data += name
            data += record
            added += 1
            if in_order:
                if name > last:
                    last = name
                else:
                    in_order, last = False, b""
        self._in_order, self._last = in_order, last
        self._live += added
        self._sorted = None

    def _place(self, name: bytes, row: int) -> None:
        slots = self._slots
        mask = len(slots) - 1
        slot = hash(name) & mask
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = row

    def _remove_row(self, name: bytes) -> bytes | None:
        row = self.row(name)
        if row < 0:
            return None
        record = self.record(row)
        slots = self._slots
        mask = len(slots) - 1
        slot = hash(name) & mask
        while slots[slot] != row:
            slot = (slot + 1) & mask
        slots[slot] = _GONE
        self._data[self._starts[row] + 1] |= _REMOVED >> 8
        self._live -= 1
        self._sorted = None
        return record

    def _rebuild(self) -> None:
        """A (larger) index; removed rows' bytes are dropped first, if there are any."""
        if self._live < len(self._starts):
            data, starts = self._data, self._starts
            self._data, self._starts = bytearray(), array("I")
            for row in range(len(starts)):
                start = starts[row]
                if not data[start + 1] & (_REMOVED >> 8):
                    end = start + 3 + (data[start] | data[start + 1] << 8) + data[start + 2]
                    self._starts.append(len(self._data))
                    self._data += data[start:end]
        size = max(16, len(self._slots))
        while 2 * (len(self._starts) + 1) > size:  # at most half full after, 2/3 before the next
            size *= 2
        slots = self._slots = array("i", [_FREE]) * size
        mask, data = size - 1, self._data
        for row, start in enumerate(self._starts):  # (`_place` of each row's name, in one loop)
            slot = hash(bytes(data[start + 3 : start + 3 + (data[start] | data[start + 1] << 8)])) & mask
            while slots[slot] >= 0:
                slot = (slot + 1) & mask
            slots[slot] = row


NO_CHILDREN = Children(sealed=True)


@dataclass(eq=False, slots=True)
class Inode:
    mode: int  # st_mode: file type and permission bits
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    # Marks a directory that was only implied by a deeper path in its layer (no tar entry);
    # merge then keeps the lower layer's attributes, as an OCI runtime does.
    implicit: bool = False
    size: int = 0
    rdev: int = 0  # encoded as glibc makedev, truncated to 32 bits
    target: bytes = b""
    # the shared empty containers unless set: most inodes have no xattrs, files no children
    xattrs: dict[bytes, bytes] = field(default_factory=lambda: NO_XATTRS)
    chunks: Chunks = ()
    children: Children = field(default_factory=lambda: NO_CHILDREN)
    serial: int = -1  # scratch: this inode's place in the bootstrap being laid out

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


Node = Inode | bytes  # an inode, or a plain file's record


class ChunkTable(Protocol):
    """The chunks of one blob by CI index, held outside the records (the chunks of the layer's own
    blob, which its writer holds anyway): a record names such a chunk by its index only."""

    def packed(self, index: int) -> bytes:
        """`Chunk.packed` of chunk `index`."""
        ...

    def head(self, index: int) -> int:
        """The first two bytes of its digest, big-endian."""
        ...

    def placement(self, index: int) -> tuple[int, int]:
        """Its (uncompressed offset, uncompressed size)."""
        ...


class BlobRefs:
    """The blob ids that file records of one family of trees (a layer's, or the layers merged
    into an image) refer to, numbered, and the chunk tables of those blobs that hold their chunks."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._numbers: dict[str, int] = {}
        self.tables: dict[int, ChunkTable] = {}  # by blob ref

    def hold(self, blob_id: str, table: ChunkTable) -> None:
        """Records of chunks of `blob_id` made from now on name them in `table` by index."""
        self.tables[self.number(blob_id)] = table

    def number(self, blob_id: str) -> int:
        number = self._numbers.get(blob_id)
        if number is None:
            if len(self.ids) > 0xFFFF:
                raise FormatError("more than 65 536 blobs in one image")
            number = self._numbers[blob_id] = len(self.ids)
            self.ids.append(blob_id)
        return number


# A plain file's record: [its chunk's key] + mode (u16), uid, gid (u32) + mtime (u32, or u64 when
# it does not fit). Its size is its chunk's (or 0); an empty file has attributes only. The key is
# the chunk's CI index (u32) + blob ref (u16) when `BlobRefs` holds a chunk table of that blob,
# else the whole `chunk_key`. The kinds differ in size, so a record's size tells them apart.
_OWNER = struct.Struct("<HII")
CHUNK_KEY = struct.Struct(Chunk._RECORD.format + "H")  # `chunk_key`: Chunk.packed + blob ref
CHUNK_KEY_SIZE = CHUNK_KEY.size
CHUNK_RECORD = struct.Struct(CHUNK_KEY.format + "HIII")  # a record of a whole key and a u32 mtime
_INDEX_KEY = struct.Struct("<IH")  # CI index + blob ref
INDEX_KEY_SIZE = _INDEX_KEY.size
_KEY_PLACE = struct.Struct("<32xI12xIQxH")  # a chunk key's CI index, uncompressed size and offset, blob ref


def is_plain(inode: Inode) -> bool:
    """Whether a regular file inode can be kept as a record (hardlinks aside), once its chunk
    is resolved."""
    return (
        inode.is_reg
        and not inode.xattrs
        and len(inode.chunks) <= 1
        and inode.size == sum(chunk.uncompressed_size for chunk in inode.chunks)
    )


def has_chunk(record: bytes) -> bool:
    return len(record) > RECORD_ATTRS_MAX


RECORD_ATTRS_MAX = _OWNER.size + 8  # the largest record without a chunk


def _key_size(record_size: int) -> int:
    """The size of the chunk key a record of `record_size` bytes starts with."""
    if record_size <= RECORD_ATTRS_MAX:
        return 0
    return INDEX_KEY_SIZE if record_size <= RECORD_ATTRS_MAX + INDEX_KEY_SIZE else CHUNK_KEY_SIZE


def is_resolved(inode: Inode) -> bool:
    chunks = inode.chunks
    if isinstance(chunks, Chunk):  # a one-chunk file (most): no generator
        return chunks.blob_id != PENDING_BLOB_ID
    return all(chunk.blob_id != PENDING_BLOB_ID for chunk in chunks)


def file_record(inode: Inode, refs: BlobRefs) -> bytes:
    key = b""
    chunks = inode.chunks
    for chunk in (chunks,) if isinstance(chunks, Chunk) else chunks:  # (no generator for one chunk)
        ref = refs.number(chunk.blob_id)
        key = _INDEX_KEY.pack(chunk.index, ref) if ref in refs.tables else chunk_key(chunk, refs)
    return pack_record(key, inode.mode, inode.uid, inode.gid, inode.mtime)


def pack_record(key: bytes, mode: int, uid: int, gid: int, mtime: int) -> bytes:
    """A file record of these attributes after `key`: its chunk's key (b"" for none)."""
    return key + _OWNER.pack(mode, uid, gid) + mtime.to_bytes(4 if mtime < 1 << 32 else 8, "little")


def chunk_key(chunk: Chunk, refs: BlobRefs) -> bytes:
    """A chunk as packed fields and blob ref (equal iff chunks are)."""
    return chunk.packed + refs.number(chunk.blob_id).to_bytes(2, "little")


def record_key(record: bytes, refs: BlobRefs) -> bytes:
    """The `chunk_key` of the chunk of a record that has one."""
    if _key_size(len(record)) == CHUNK_KEY_SIZE:
        return record[:CHUNK_KEY_SIZE]
    index, ref = _INDEX_KEY.unpack_from(record)
    return refs.tables[ref].packed(index) + record[4:INDEX_KEY_SIZE]


RecordFields = tuple[int, int, int, int, int, int, int, int]

# a record's fields by its size (the kinds of key, each with a u32 or u64 mtime): attributes
# only; CI index and blob ref; a chunk key's CI index, uncompressed size and offset, blob ref
_RECORD_LAYOUTS = {
    _OWNER.size + 4: struct.Struct("<HIII"),
    _OWNER.size + 8: struct.Struct("<HIIQ"),
    INDEX_KEY_SIZE + _OWNER.size + 4: struct.Struct("<IHHIII"),
    INDEX_KEY_SIZE + _OWNER.size + 8: struct.Struct("<IHHIIQ"),
    CHUNK_KEY_SIZE + _OWNER.size + 4: struct.Struct(_KEY_PLACE.format + "HIII"),
    CHUNK_KEY_SIZE + _OWNER.size + 8: struct.Struct(_KEY_PLACE.format + "HIIQ"),
}

_WHOLE_RECORD_SIZE = CHUNK_KEY_SIZE + _OWNER.size + 4  # a record of a whole key and a u32 mtime
_WHOLE_RECORD = _RECORD_LAYOUTS[_WHOLE_RECORD_SIZE]


def record_fields(record: bytes, refs: BlobRefs) -> RecordFields:
    """(mode, uid, gid, mtime, then of its chunk: CI index, blob ref, uncompressed offset and
    size) of a file record; the chunk's are 0, its blob ref -1, when it has none."""
    return unpack_record(record, 0, len(record), refs)


def unpack_record(buffer: bytes | bytearray, at: int, size: int, refs: BlobRefs) -> RecordFields:
    """`record_fields` of the record of `size` bytes at `at` in `buffer`, read in place."""
    fields = _RECORD_LAYOUTS[size].unpack_from(buffer, at)
    if size <= RECORD_ATTRS_MAX:
        mode, uid, gid, mtime = fields
        return mode, uid, gid, mtime, 0, -1, 0, 0
    if size > RECORD_ATTRS_MAX + INDEX_KEY_SIZE:
        index, usize, offset, ref, mode, uid, gid, mtime = fields
        return mode, uid, gid, mtime, index, ref, offset, usize
    index, ref, mode, uid, gid, mtime = fields
    offset, usize = refs.tables[ref].placement(index)
    return mode, uid, gid, mtime, index, ref, offset, usize


def record_attrs(record: bytes, refs: BlobRefs) -> tuple[int, int, int, int, int]:
    """(mode, uid, gid, mtime, size) of a file record."""
    mode, uid, gid, mtime, _, _, _, size = record_fields(record, refs)
    return mode, uid, gid, mtime, size


def record_chunk(record: bytes, refs: BlobRefs) -> Chunk | None:
    if not has_chunk(record):
        return None
    key = record_key(record, refs)
    return Chunk.from_packed(key[: CHUNK_KEY_SIZE - 2], refs.ids[int.from_bytes(key[-2:], "little")])


def record_inode(record: bytes, refs: BlobRefs) -> Inode:
    mode, uid, gid, mtime, size = record_attrs(record, refs)
    chunk = record_chunk(record, refs)
    return Inode(mode=mode, uid=uid, gid=gid, mtime=mtime, size=size, chunks=() if chunk is None else chunk)


def is_dir(node: Node) -> bool:
    return isinstance(node, Inode) and stat.S_ISDIR(node.mode)


def mode_of(node: Node) -> int:
    return node.mode if isinstance(node, Inode) else _OWNER.unpack_from(node, _key_size(len(node)))[0]


def new_dir(*, implicit: bool = False) -> Inode:
    return Inode(mode=stat.S_IFDIR | 0o755, implicit=implicit, children=Children())


def encode_rdev(major: int, minor: int) -> int:
    """glibc makedev(major, minor) truncated to u32 (Linux new_encode_dev for normal numbers)."""
    value = (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12) | ((major & ~0xFFF) << 32)
    return value & 0xFFFFFFFF


def walk(root: Inode, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
    """Every (path, node) below `root` in sorted name order, depth first; root is b"/"."""
    if not prefix:
        yield b"/", root
    for name in sorted(root.children):
        child = root.children[name]
        path = prefix + b"/" + name
        yield path, child
        if isinstance(child, Inode) and child.is_dir:
            yield from walk(child, path)


def directories(root: Inode) -> Iterator[Inode]:
    """`root` and every directory below it (each once)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        yield directory
        stack.extend(child for child in directory.children.inodes() if is_dir(child))  # type: ignore[misc]


def lookup_parent(root: Inode, path: str) -> tuple[Inode, bytes] | None:
    """The directory holding `path` and its last name, when every directory on the way exists;
    (root, b"") for the root itself."""
    parts = [part for part in path.encode("utf-8", "surrogateescape").split(b"/") if part not in (b"", b".")]
    node = root
    for part in parts[:-1]:
        child = node.children.inode(part)
        if child is None:
            return None
        node = child
    return node, parts[-1] if parts else b""
