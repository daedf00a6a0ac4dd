"""The in-memory RAFS tree: inodes with their chunks, shared between hardlink names.

A directory's `children` map raw name bytes to inodes; hardlinks are the same `Inode` object
under several names. Chunks refer to their blob by blob id, so trees from different
bootstraps can be merged before blob indexes are assigned.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class Chunk:
    """Where one chunk of file data lives (a CI entry of a blob) and what it contains.

    Its fields are packed in one bytes object: a layer of a million small files has a million chunks.
    A chunk is also the sequence of its one chunk, so a one-chunk file's inode holds the chunk itself
    as its `chunks` instead of a 1-tuple (48 bytes an entry less).
    """

    __slots__ = ("_record", "blob_id")
    _RECORD = struct.Struct("<32sIQQIQ?")

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
        self._record = self._RECORD.pack(
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
        return int.from_bytes(self._record[44:52], "little")

    @property
    def uncompressed_size(self) -> int:
        return int.from_bytes(self._record[52:56], "little")

    @property
    def uncompressed_offset(self) -> int:
        return int.from_bytes(self._record[56:64], "little")

    @property
    def zran(self) -> bool:
        return self._record[64] != 0

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


Chunks = tuple[Chunk, ...] | Chunk  # a file's chunks in order; a lone chunk stands for itself


def chunks_of(chunks: list[Chunk]) -> Chunks:
    return chunks[0] if len(chunks) == 1 else tuple(chunks)


class _Sealed(dict[Any, Any]):
    """The one empty mapping shared by every inode without children or xattrs: writing to it is a bug."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("the shared empty mapping of an inode is read-only")


NO_CHILDREN: dict[bytes, Inode] = _Sealed()
NO_XATTRS: dict[bytes, bytes] = _Sealed()


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
    children: dict[bytes, Inode] = field(default_factory=lambda: NO_CHILDREN)
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


def new_dir(*, implicit: bool = False) -> Inode:
    return Inode(mode=stat.S_IFDIR | 0o755, implicit=implicit, children={})


def encode_rdev(major: int, minor: int) -> int:
    """glibc makedev(major, minor) truncated to u32 (Linux new_encode_dev for normal numbers)."""
    value = (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12) | ((major & ~0xFFF) << 32)
    return value & 0xFFFFFFFF


def walk(root: Inode, prefix: bytes = b"") -> Iterator[tuple[bytes, Inode]]:
    """Every (path, inode) below `root` in sorted name order, depth first; root is b"/"."""
    if not prefix:
        yield b"/", root
    for name in sorted(root.children):
        child = root.children[name]
        path = prefix + b"/" + name
        yield path, child
        if child.is_dir:
            yield from walk(child, path)


def lookup(root: Inode, path: str) -> Inode | None:
    node = root
    for part in path.encode("utf-8", "surrogateescape").split(b"/"):
        if part in (b"", b"."):
            continue
        child = node.children.get(part)
        if child is None:
            return None
        node = child
    return node
