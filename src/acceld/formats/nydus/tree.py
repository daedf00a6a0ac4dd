"""The in-memory RAFS tree: inodes with their chunks, shared between hardlink names.

A directory's `children` map raw name bytes to inodes; hardlinks are the same `Inode` object
under several names. Chunks refer to their blob by blob id, so trees from different
bootstraps can be merged before blob indexes are assigned.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Chunk:
    """Where one chunk of file data lives (a CI entry of a blob) and what it contains."""

    digest: bytes
    blob_id: str
    index: int  # CI index within the blob
    compressed_offset: int
    compressed_size: int
    uncompressed_offset: int
    uncompressed_size: int
    zran: bool = False  # lives in a gzip layer, read through a zran context (always "compressed")

    @property
    def compressed(self) -> bool:
        return self.zran or self.compressed_size != self.uncompressed_size


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
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    children: dict[bytes, Inode] = field(default_factory=dict)

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
    return Inode(mode=stat.S_IFDIR | 0o755, implicit=implicit)


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
