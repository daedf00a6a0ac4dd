"""Read one OCI layer tar stream into a RAFS tree (§7.1), handing file data to a chunk store.

Whiteout entries are kept as ordinary empty files here; only the merge applies them.
"""

from __future__ import annotations

import stat
from collections import deque
from typing import IO, Protocol

from acceld.formats.driver import FormatError
from acceld.formats.nydus.layout import MAX_CHUNKS_PER_BLOB, xattr_name_index
from acceld.formats.nydus.tree import (
    NO_CHILDREN,
    NO_XATTRS,
    OPAQUE_MARKER,
    BlobRefs,
    Children,
    Chunk,
    Inode,
    chunks_of,
    encode_rdev,
    is_resolved,
    new_dir,
    record_inode,
)
from acceld.formats.targuard import TarGuard
from acceld.formats.tarreader import (
    TYPE_BLOCK,
    TYPE_CHAR,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_GNU_SPARSE,
    TYPE_LINK,
    TYPE_REG,
    TYPE_SYMLINK,
    Header,
    HeaderReader,
)

_SKIPPED_TOP_LEVEL = {b"stargz.index.json", b".prefetch.landmark", b".no.prefetch.landmark"}
_TYPE_CONTIGUOUS = "7"
_REGULAR = (TYPE_REG, TYPE_GNU_SPARSE)
_FILE_TYPES = {  # the file type of each tar entry type RAFS stores
    TYPE_DIR: stat.S_IFDIR,
    TYPE_REG: stat.S_IFREG,
    TYPE_GNU_SPARSE: stat.S_IFREG,
    TYPE_SYMLINK: stat.S_IFLNK,
    TYPE_CHAR: stat.S_IFCHR,
    TYPE_BLOCK: stat.S_IFBLK,
    TYPE_FIFO: stat.S_IFIFO,
}
MAX_SYMLINK_TARGET = 0xFFFF
MAX_NAME = 255  # EROFS_NAME_LEN
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 0xFFFF  # e_value_size is a u16
_MAX_SHARED_INTS = 1 << 16


class ChunkStore(Protocol):
    def add(self, data: bytes) -> Chunk:
        """Store one piece of file data (at most one chunk) and say where it lives (or will)."""
        ...

    def flush(self) -> None:
        """The stream has ended: resolve every chunk handed out."""
        ...

    def placed(self, node: Inode) -> None:
        """`node.chunks` now holds the chunks the latest `add` calls returned for it (at least one)."""
        ...


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _split(name: str) -> list[bytes]:
    encoded = _encode(name)
    parts = encoded.split(b"/")
    if b"" in parts or b"." in parts:
        parts = [p for p in parts if p not in (b"", b".")]
    if b".." in parts:
        raise FormatError(f"tar entry escapes the root: {name!r}")
    if len(encoded) > MAX_NAME and any(len(part) > MAX_NAME for part in parts):
        raise FormatError(f"tar entry has a name component longer than {MAX_NAME} bytes: {name[:80]!r}…")
    return parts


def _xattrs(info: Header) -> dict[bytes, bytes]:
    if not info.xattrs:
        return NO_XATTRS
    xattrs: dict[bytes, bytes] = {}
    for key, raw in info.xattrs.items():
        name = _encode(key)
        if xattr_name_index(name) is None:
            raise FormatError(
                f"{info.name}: invalid xattr key {name!r} (only user., trusted., security. "
                "and POSIX ACLs are supported)"
            )
        if len(name) > MAX_XATTR_NAME or len(raw) > MAX_XATTR_VALUE:
            raise FormatError(f"{info.name}: xattr {name!r} is too large")
        xattrs[name] = raw
    return xattrs or NO_XATTRS


class _LayerTree:
    def __init__(self, store: ChunkStore, refs: BlobRefs, chunk_size: int, sparse_files: bool) -> None:
        self.root = new_dir(implicit=True)
        self.store = store
        self.refs = refs
        self.chunk_size = chunk_size
        self.sparse_files = sparse_files
        self.ints: dict[int, int] = {}
        # plain files not yet records (their chunk is in flight), in tar order: (directory, name, inode)
        self.unsettled: deque[tuple[Children, bytes, Inode]] = deque()
        self.unsettled_ids: dict[int, bool] = {}  # id of each of them: whether a hardlink names it
        # the directory `parent_of` found last and its path (tars list a directory's entries
        # together), forgotten whenever an entry replaces a node
        self.last_parts: list[bytes] | None = None
        self.last_parent = self.root

    def parent_of(self, parts: list[bytes], name: str) -> Inode:
        if parts == self.last_parts:
            return self.last_parent
        node = self.root
        for part in parts:
            child = node.children.get(part)
            if child is None:
                child = new_dir(implicit=True)
                node.children.insert(part, child)
            elif not isinstance(child, Inode) or not child.is_dir:
                raise FormatError(f"{name}: parent {part!r} is not a directory")
            node = child
        self.last_parts, self.last_parent = parts, node
        return node

    def link_target(self, name: str) -> Inode | None:
        """The inode a hardlink names; a plain file's record becomes an inode (it gets a second name)."""
        parts = _split(name)
        node: Inode = self.root
        for part in parts[:-1]:
            child = node.children.get(part)
            if not isinstance(child, Inode):
                return None
            node = child
        if not parts:
            return node
        target = node.children.get(parts[-1])
        if isinstance(target, bytes):
            target = node.children[parts[-1]] = record_inode(target, self.refs)
        elif target is not None and id(target) in self.unsettled_ids:
            self.unsettled_ids[id(target)] = True
        return target

    def settle(self, everything: bool = False) -> None:
        """Plain files whose chunk is resolved (`everything`: all of them) become records, unless
        a hardlink names them or a later entry replaced them."""
        unsettled = self.unsettled
        while unsettled:
            directory, name, inode = unsettled[0]
            if not everything and not is_resolved(inode):
                break
            unsettled.popleft()
            if not self.unsettled_ids.pop(id(inode)):  # no hardlink names it
                directory.settle(name, inode, self.refs)

    def add(self, reader: _TarReader, info: Header) -> None:
        parts = _split(info.name)
        if len(parts) == 1 and parts[0] in _SKIPPED_TOP_LEVEL:
            return
        if info.typeflag == _TYPE_CONTIGUOUS:
            raise FormatError(f"{info.name}: contiguous tar entries are not supported")
        if info.typeflag == TYPE_LINK:
            target = self.link_target(info.linkname)
            if target is None or target.is_dir:
                raise FormatError(
                    f"{info.name}: hardlink target {info.linkname!r} is not a non-directory in this layer"
                )
            self.parent_of(parts[:-1], info.name).children[parts[-1]] = target
            self.last_parts = None
            return
        node = self.inode(reader, info)
        if not parts:
            node.children = self.root.children
            self.root = node
            self.last_parts = None
            return
        children = self.parent_of(parts[:-1], info.name).children
        name = parts[-1]
        existing = children.get(name)
        if existing is None:
            children.insert(name, node)
        else:
            self.last_parts = None
            if node.is_dir:
                if isinstance(existing, Inode) and existing.is_dir:
                    node.children = existing.children
                else:
                    # the file it replaces had already hidden any lower directory of this name
                    node.children[OPAQUE_MARKER] = Inode(mode=stat.S_IFREG)
            children[name] = node
        chunks = node.chunks
        if info.typeflag in _REGULAR and not node.xattrs and (not isinstance(chunks, tuple) or not chunks):
            # a plain file (`tree.is_plain`: its chunks' sizes add up to its own by construction)
            self.unsettled.append((children, name, node))
            self.unsettled_ids[id(node)] = False
        if self.unsettled:
            self.settle()

    def inode(self, reader: _TarReader, info: Header) -> Inode:
        mtime = info.mtime_ns // 1_000_000_000
        uid, gid = info.uid, info.gid
        if not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32 and 0 <= mtime < 1 << 63):
            raise FormatError(f"{info.name}: uid, gid or mtime out of the range RAFS can store")
        xattrs = _xattrs(info) if info.xattrs else NO_XATTRS
        typeflag = info.typeflag
        kind = _FILE_TYPES.get(typeflag)
        if kind is None:
            raise FormatError(f"{info.name}: unsupported tar entry type {typeflag.encode('latin-1')!r}")
        shared = self.shared
        node = Inode(
            shared(info.mode & 0o7777 | kind),
            uid,
            gid,
            shared(mtime),
            xattrs=xattrs,
            children=Children() if kind == stat.S_IFDIR else NO_CHILDREN,
        )
        if kind == stat.S_IFREG:
            self.read_content(reader, info, node)
        elif kind == stat.S_IFLNK:
            node.target = _encode(info.linkname)
            if len(node.target) > MAX_SYMLINK_TARGET:
                raise FormatError(f"{info.name}: symlink target longer than {MAX_SYMLINK_TARGET} bytes")
            node.size = len(node.target)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = encode_rdev(info.devmajor, info.devminor)
        return node

    def shared(self, value: int) -> int:
        """One int object per distinct mode or mtime (while there are few): 32 bytes an entry less."""
        if len(self.ints) < _MAX_SHARED_INTS:
            return self.ints.setdefault(value, value)
        return self.ints.get(value, value)

    def read_content(self, reader: _TarReader, info: Header, node: Inode) -> None:
        if -(-info.size // self.chunk_size) > MAX_CHUNKS_PER_BLOB:
            raise FormatError(f"{info.name}: file needs more than 2^24 chunks")
        if info.sparse is not None:
            if not self.sparse_files:
                raise FormatError(
                    f"{info.name}: a sparse file's holes are not in the layer, so it cannot be referenced "
                    "in place (convert to native Nydus instead)"
                )
            self.read_sparse_content(reader, info, node)
            return
        size = info.size
        if size <= self.chunk_size:  # most files: one chunk at most
            if size:
                data = reader.read(size)
                if len(data) != size:
                    raise FormatError(f"{info.name}: tar stream ends inside the file")
                node.chunks = self.store.add(data)
                node.size = size
                self.store.placed(node)
            return
        remaining = size
        chunks = []
        while remaining:
            data = reader.read(min(self.chunk_size, remaining))
            if not data:
                raise FormatError(f"{info.name}: tar stream ends inside the file")
            chunks.append(self.store.add(data))
            remaining -= len(data)
        node.chunks = chunks_of(chunks)
        node.size = info.size
        if chunks:
            self.store.placed(node)

    def read_sparse_content(self, reader: _TarReader, info: Header, node: Inode) -> None:
        """A GNU sparse file (old GNU or PAX map) stored with its holes as zeros, as Go's
        archive/tar, and so every runtime, extracts it."""
        pending = bytearray()
        chunks = []
        at = 0
        # empty segments (an old GNU map's last entry, which marks the size) carry nothing
        segments = [(offset, length) for offset, length in info.sparse or () if length]
        for offset, length in [*segments, (info.size, 0)]:
            if offset < at or offset + length > info.size:
                raise FormatError(f"{info.name}: bad sparse map")
            hole, at = offset - at, offset + length
            while hole or length:
                if hole:
                    piece = bytes(min(hole, self.chunk_size))
                    hole -= len(piece)
                else:
                    piece = reader.read(min(length, self.chunk_size))
                    if not piece:
                        raise FormatError(f"{info.name}: tar stream ends inside the file")
                    length -= len(piece)
                pending += piece
                while len(pending) >= self.chunk_size:
                    chunks.append(self.store.add(bytes(pending[: self.chunk_size])))
                    del pending[: self.chunk_size]
        if pending:
            chunks.append(self.store.add(bytes(pending)))
        node.chunks = chunks_of(chunks)
        node.size = info.size
        if chunks:
            self.store.placed(node)


class _TarReader:
    """The tar stream with the position `HeaderReader` needs; file data is read straight from it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.position = 0

    def read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.position += len(data)
        return data


def tree_from_tar(
    stream: IO[bytes],
    store: ChunkStore,
    refs: BlobRefs,
    chunk_size: int,
    *,
    sparse_files: bool = True,
    guard: TarGuard | None = None,
) -> Inode:
    """Read the whole tar stream sequentially and return the root of its tree (its file records
    numbered in `refs`).

    Every chunk is handed to `store.add` right after the one `stream.read` that returned it, unless
    it holds sparse-file holes; `sparse_files=False` refuses sparse files instead. `guard`, the
    TarGuard watching `stream`, is handed every header.
    """
    tree = _LayerTree(store, refs, chunk_size, sparse_files)
    reader = _TarReader(stream)
    headers = HeaderReader(reader, sparse=True, strict_globals=False, guard=guard)
    while (info := headers.next()) is not None:
        tree.add(reader, info)
    store.flush()
    tree.settle(everything=True)
    return tree.root
