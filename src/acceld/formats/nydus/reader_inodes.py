"""Inodes, directories, xattrs and chunk addresses of a RAFS v6 bootstrap, and the tree they form.

`InodeTree.walk` follows directory entries from the root nid, parsing and checking every inode it
reaches (layouts, inline tails, dirent blocks and their byte order, xattrs, chunk addresses);
`check_links` checks i_ino / i_nlink semantics. Violations raise `BootstrapError`.
"""

from __future__ import annotations

import itertools
import stat
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np

from acceld.formats.nydus.reader_claims import INODE_BLOCKS_CLAIM, INODE_CLAIM, Claims
from acceld.formats.nydus.reader_common import (
    BLOCK_SIZE,
    BootstrapError,
    Mapped,
    align,
    release_pages,
    u16,
    u64,
)

INODE_SLOT: Final = 32
COMPACT_INODE_SIZE: Final = 32
EXTENDED_INODE_SIZE: Final = 64
DIRENT_SIZE: Final = 12
XATTR_HEADER_SIZE: Final = 12
CHUNK_ADDR_SIZE: Final = 8
EROFS_NULL_ADDR: Final = 0xFFFFFFFF
LAYOUT_FLAT_PLAIN: Final = 0
LAYOUT_FLAT_INLINE: Final = 2
LAYOUT_CHUNK_BASED: Final = 4
CHUNK_FORMAT_INDEXES: Final = 0x20
_EXTENDED: Final = struct.Struct("<QIIIIQII")  # i_size, i_u, i_ino, uid, gid, mtime, mtime_nsec, i_nlink
_COMPACT: Final = struct.Struct("<HIxxxxIIHH")  # i_nlink, i_size, (reserved), i_u, i_ino, uid, gid
_CHUNK_ADDR: Final = struct.Struct("<HHI")

XATTR_PREFIXES: Final = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
}
FULL_NAME_XATTR_INDEXES: Final = (2, 3)

FILE_TYPES: Final = {
    stat.S_IFREG: 1,
    stat.S_IFDIR: 2,
    stat.S_IFCHR: 3,
    stat.S_IFBLK: 4,
    stat.S_IFIFO: 5,
    stat.S_IFSOCK: 6,
    stat.S_IFLNK: 7,
}


class BlobLimits(Protocol):
    """What chunk addresses are checked against: the blob-table entry of their blob."""

    @property
    def chunk_count(self) -> int: ...

    @property
    def uncompressed_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ChunkAddr:
    """One 8-byte chunk address of a chunk-based inode, decoded."""

    blob_index: int  # 0-based index into the blob table
    ci_index: int
    blk_addr: int  # uncompressed offset / 4096 within that blob


_NO_XATTRS: dict[str, bytes] = {}
_NO_ENTRIES: list[tuple[bytes, int, int]] = []


@dataclass(slots=True)
class Inode:
    nid: int
    offset: int
    extended: bool
    layout: int
    mode: int
    size: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int
    i_u: int
    # set by the parser when present; until then shared empties (a layer may have a million files)
    xattrs: dict[str, bytes] = field(default_factory=lambda: _NO_XATTRS)
    chunks: tuple[ChunkAddr, ...] = ()
    target: bytes = b""
    entries: list[tuple[bytes, int, int]] = field(default_factory=lambda: _NO_ENTRIES)  # (name, nid, type)

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def rdev(self) -> tuple[int, int]:
        """(major, minor) of a device inode: glibc makedev truncated to 32 bits."""
        dev = self.i_u
        return (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


ChunkCheck = Callable[["Inode", int, ChunkAddr], None]
_RELEASE_EVERY: Final = 1024  # inodes parsed between drops of the bootstrap mapping's pages


class InodeTree:
    """Parses inodes on demand while walking the tree; nothing is kept per inode.

    A checking tree (`claims` given) claims every byte range it parses, checks chunk addresses
    with `check_chunk`, refuses a directory reachable twice and records one 8-byte key per name
    for `check_links`. Other trees only read (a bootstrap already checked).
    """

    def __init__(
        self,
        data: Mapped,
        meta_addr: int,
        chunk_size: int,
        blobs: Sequence[BlobLimits],
        compact_mtime: int,
        claims: Claims | None = None,
        check_chunk: ChunkCheck | None = None,
    ) -> None:
        self.data = data
        self.meta_addr = meta_addr
        self.chunk_size = chunk_size
        self.blobs = blobs
        self.compact_mtime = compact_mtime  # compact inodes have no mtime: the superblock build time
        self.claims = claims
        self.check_chunk = check_chunk
        self.seen = bytearray((len(data) - meta_addr) // INODE_SLOT // 8 + 1 if len(data) > meta_addr else 1)
        self.names = array("Q")  # ino << 32 | nid << 2 | directory << 1 | (i_nlink == 1), one per name
        self.has_xattrs = False
        self.parsed = 0

    def walk(self, root_nid: int) -> Iterator[tuple[str, Inode]]:
        """Every path with its inode, parents before children, each directory's entries in dirent order."""
        root = self._reach(root_nid, "/")
        if root.kind != stat.S_IFDIR:
            raise BootstrapError(f"root nid {root_nid} is not a directory (mode {root.mode:#o})")
        if root.ino:  # old builders wrote i_ino 0 for the root
            self._name(root)
        yield "/", root
        frames: list[_Frame] = []
        path, nid, parent_nid = "/", root_nid, root_nid
        while True:
            frame = _Frame(path, nid)
            yield from self._list(frame, parent_nid)
            frames.append(frame)
            while frames and not frames[-1].pending():
                frames.pop()
            if not frames:
                return
            parent = frames[-1]
            name, nid = parent.next()
            path, parent_nid = (parent.path if parent.path != "/" else "") + "/" + name, parent.nid

    def _list(self, frame: _Frame, parent_nid: int) -> Iterator[tuple[str, Inode]]:
        """The entries of one directory; its subdirectories are noted in `frame` for later."""
        path = frame.path
        directory = self._parse(frame.nid, path, claim=False, entries=True)
        prefix = path if path != "/" else ""
        for name, nid, ftype in directory.entries:
            if name in (b".", b"..") and ftype != FILE_TYPES[stat.S_IFDIR]:
                raise BootstrapError(
                    f"directory {path} (nid {directory.nid}): {name!r} has file type {ftype}"
                )
            if name == b".":
                if nid != directory.nid:
                    raise BootstrapError(f"directory {path} (nid {directory.nid}): '.' points to nid {nid}")
                continue
            if name == b"..":
                if nid != parent_nid:
                    raise BootstrapError(
                        f"directory {path} (nid {directory.nid}): '..' points to nid {nid}, "
                        f"expected the parent nid {parent_nid}"
                    )
                continue
            child_path = prefix + "/" + name.decode("utf-8", "surrogateescape")
            child = self._reach(nid, child_path)
            if FILE_TYPES.get(child.kind) != ftype:
                raise BootstrapError(
                    f"dirent {child_path}: file type {ftype} does not match the inode mode {child.mode:#o}"
                )
            if self.claims is not None:
                self._name(child)
            if child.kind == stat.S_IFDIR:
                frame.add(name, nid)
            yield child_path, child
        expected_nlink = 2 + len(frame.nids)
        if directory.nlink != expected_nlink:
            raise BootstrapError(
                f"directory {path} (nid {directory.nid}) has i_nlink {directory.nlink}, expected "
                f"{expected_nlink} (2 + subdirectories)"
            )

    def find(self, root_nid: int, path: str) -> Inode:
        """The inode of an absolute path, found through the directory entries."""
        parts = path.split("/")[1:] if path != "/" else []
        if not path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise BootstrapError(f"no such path in the bootstrap: {path}")
        inode = self._parse(root_nid, "/", claim=False, entries=bool(parts))
        for depth, part in enumerate(parts):
            name = part.encode("utf-8", "surrogateescape")
            nid = next((nid for entry, nid, _ in inode.entries if entry == name), None)
            if nid is None or (depth + 1 < len(parts) and inode.kind != stat.S_IFDIR):
                raise BootstrapError(f"no such path in the bootstrap: {path}")
            inode = self._parse(nid, path, claim=False, entries=depth + 1 < len(parts))
        return inode

    def load(self, nid: int) -> Inode:
        """One inode of a checked tree, with its data."""
        return self._parse(nid, "", claim=False, entries=True)

    def _name(self, inode: Inode) -> None:
        directory = inode.kind == stat.S_IFDIR
        self.names.append(inode.ino << 32 | inode.nid << 2 | directory << 1 | (inode.nlink == 1))

    def check_links(self) -> None:
        """i_ino identifies a file: one nid per i_ino, or (2022 builders) identical copies sharing one.

        i_nlink of a non-directory must count every name of that file. Only names whose i_ino is
        shared or whose i_nlink is not 1 are looked at one by one.
        """
        keys = np.frombuffer(self.names, dtype=np.uint64)
        keys = np.sort(keys)
        inos = keys >> np.uint64(32)
        shared = np.zeros(len(keys), dtype=bool)
        if len(keys) > 1:
            same = inos[1:] == inos[:-1]
            shared[1:] |= same
            shared[:-1] |= same
        del inos
        plain = (keys & np.uint64(3)) != 0  # a directory, or a file of one link
        suspects = np.nonzero(shared | ~plain)[0]
        del shared, plain
        groups: dict[int, list[int]] = {}
        for index in suspects:
            key = int(keys[index])
            groups.setdefault(key >> 32, []).append((key >> 2) & 0x3FFF_FFFF)
        for ino, names in groups.items():
            self._check_link_group(ino, names)

    def _check_link_group(self, ino: int, names: list[int]) -> None:
        nids = sorted(set(names))
        first = self.load(nids[0])
        for nid in nids[1:]:
            other = self.load(nid)
            if first.kind == stat.S_IFDIR or not _same_file(first, other):
                raise BootstrapError(f"nids {first.nid} and {nid} share i_ino {ino} but are different files")
        total = len(names)
        for nid in nids:
            inode = self.load(nid)
            if inode.kind != stat.S_IFDIR and inode.nlink != total:
                raise BootstrapError(
                    f"nid {nid} (i_ino {ino}) has i_nlink {inode.nlink} but the file has {total} names"
                )

    def reached(self, nid: int) -> bool:
        """Whether the checking walk reached `nid`."""
        return 0 <= nid < len(self.seen) * 8 and bool(self.seen[nid >> 3] & 1 << (nid & 7))

    def _reach(self, nid: int, path: str) -> Inode:
        """The inode of a name met while walking; a checking tree parses (claims) each nid only once."""
        if self.claims is None:
            return self._parse(nid, path, claim=False, entries=False)
        self._offset(nid, path)
        if self.reached(nid):
            inode = self._parse(nid, path, claim=False, entries=False)
            if inode.kind == stat.S_IFDIR:
                raise BootstrapError(f"directory nid {nid} is reachable twice (again as {path})")
            return inode
        self.seen[nid >> 3] |= 1 << (nid & 7)
        return self._parse(nid, path, claim=True, entries=False)

    def _offset(self, nid: int, path: str) -> int:
        offset = self.meta_addr + nid * INODE_SLOT
        if offset + COMPACT_INODE_SIZE > len(self.data):
            raise BootstrapError(
                f"inode nid {nid} ({path}, offset {offset:#x}) lies past the bootstrap end "
                f"{len(self.data):#x}"
            )
        return offset

    def _parse(self, nid: int, path: str, *, claim: bool, entries: bool) -> Inode:
        """Parse one inode; `claim` also claims its bytes and checks its chunks (first reach), `entries`
        reads a directory's entries."""
        self.parsed += 1
        if self.parsed % _RELEASE_EVERY == 0:
            release_pages(self.data)
        data = self.data
        offset = self._offset(nid, path)
        where = f"inode nid {nid} ({path}, offset {offset:#x})"
        i_format = u16(data, offset)
        if i_format & ~0xF:
            raise BootstrapError(f"{where}: i_format {i_format:#x} has unknown bits")
        extended = bool(i_format & 1)
        layout = i_format >> 1
        isize = EXTENDED_INODE_SIZE if extended else COMPACT_INODE_SIZE
        if offset + isize > len(data):
            raise BootstrapError(f"{where} lies past the bootstrap end {len(data):#x}")
        icount = u16(data, offset + 2)
        mode = u16(data, offset + 4)
        if extended:
            size, i_u, ino, uid, gid, mtime, mtime_nsec, nlink = _EXTENDED.unpack_from(data, offset + 8)
        else:
            nlink, size, i_u, ino, uid, gid = _COMPACT.unpack_from(data, offset + 6)
            mtime, mtime_nsec = self.compact_mtime, 0
        if nlink == 0:
            raise BootstrapError(f"{where}: i_nlink is 0")
        inode = Inode(
            nid=nid,
            offset=offset,
            extended=extended,
            layout=layout,
            mode=mode,
            size=size,
            ino=ino,
            uid=uid,
            gid=gid,
            mtime=mtime,
            mtime_nsec=mtime_nsec,
            nlink=nlink,
            i_u=i_u,
        )
        xattr_size = XATTR_HEADER_SIZE + (icount - 1) * 4 if icount else 0
        body_end = offset + isize + xattr_size
        if body_end > len(data):
            raise BootstrapError(f"{where}: {xattr_size} bytes of xattrs run past the bootstrap end")
        if icount:
            inode.xattrs = _parse_xattrs(data[offset + isize : body_end], where)
            self.has_xattrs = True
        end = self._inode_data(inode, body_end, where, claim, entries)
        if claim and self.claims is not None:
            self.claims.add(offset, end, INODE_CLAIM, nid)
        return inode

    def _inode_data(self, inode: Inode, body_end: int, where: str, claim: bool, entries: bool) -> int:
        """Parse the type-specific data of `inode`; returns the end of its inline part."""
        kind, layout, size = inode.kind, inode.layout, inode.size
        if kind == stat.S_IFREG:
            if layout != LAYOUT_CHUNK_BASED:
                raise BootstrapError(
                    f"{where}: regular file has data layout {layout}, expected 4 (CHUNK_BASED)"
                )
            return self._chunk_addresses(inode, body_end, where, claim)
        if kind in (stat.S_IFDIR, stat.S_IFLNK):
            if layout not in (LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE):
                raise BootstrapError(
                    f"{where}: data layout {layout}, expected 0 (FLAT_PLAIN) or 2 (FLAT_INLINE)"
                )
            if size == 0:
                raise BootstrapError(
                    f"{where}: {'directory' if kind == stat.S_IFDIR else 'symlink'} has i_size 0"
                )
            pieces, end = self._flat_data(inode, body_end, where, claim)
            if kind == stat.S_IFLNK:
                inode.target = b"".join(self.data[start:stop] for start, stop in pieces)
            elif entries:
                inode.entries = _parse_dirents([self.data[start:stop] for start, stop in pieces], size, where)
            return end
        if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            if layout != LAYOUT_FLAT_PLAIN or size != 0:
                raise BootstrapError(
                    f"{where}: special file has layout {layout} and i_size {size}, expected FLAT_PLAIN and 0"
                )
            return body_end
        raise BootstrapError(f"{where}: i_mode {inode.mode:#o} has no valid file type")

    def _flat_data(
        self, inode: Inode, body_end: int, where: str, claim: bool
    ) -> tuple[list[tuple[int, int]], int]:
        """The byte ranges of a FLAT_PLAIN / FLAT_INLINE inode's data (the last one cut to i_size)."""
        data, size = self.data, inode.size
        nblocks = -(-size // BLOCK_SIZE)
        tail = size % BLOCK_SIZE
        inline = inode.layout == LAYOUT_FLAT_INLINE
        if inline and tail == 0:
            raise BootstrapError(f"{where}: FLAT_INLINE with i_size {size}, a multiple of 4096 (no tail)")
        plain_blocks = nblocks - 1 if inline else nblocks
        pieces: list[tuple[int, int]] = []
        if plain_blocks:
            start = inode.i_u * BLOCK_SIZE
            stop = start + plain_blocks * BLOCK_SIZE
            if stop > len(data) or start < BLOCK_SIZE:
                raise BootstrapError(
                    f"{where}: data blocks {inode.i_u}..{inode.i_u + plain_blocks - 1} "
                    "lie outside the bootstrap"
                )
            if claim and self.claims is not None:
                self.claims.add(start, stop, INODE_BLOCKS_CLAIM, inode.nid)
            for k in range(plain_blocks):
                last = k == nblocks - 1
                block = start + k * BLOCK_SIZE
                pieces.append((block, block + (tail or BLOCK_SIZE) if last else block + BLOCK_SIZE))
        if not inline:
            return pieces, body_end
        if body_end // BLOCK_SIZE != (body_end + tail - 1) // BLOCK_SIZE:
            raise BootstrapError(
                f"{where}: inline tail of {tail} bytes at {body_end:#x} crosses a 4096-byte block boundary"
            )
        if body_end + tail > len(data):
            raise BootstrapError(f"{where}: inline tail runs past the bootstrap end")
        pieces.append((body_end, body_end + tail))
        return pieces, body_end + tail

    def _chunk_addresses(self, inode: Inode, body_end: int, where: str, claim: bool) -> int:
        data, chunk_size = self.data, self.chunk_size
        i_u = inode.i_u
        chunk_bits = (i_u & 0x1F) + 12
        if i_u & ~0x3F or not i_u & CHUNK_FORMAT_INDEXES:
            raise BootstrapError(f"{where}: chunk format i_u {i_u:#x} is not 0x20 | (log2(chunk size) - 12)")
        if 1 << chunk_bits < chunk_size:
            raise BootstrapError(
                f"{where}: chunk format i_u {i_u:#x} gives {1 << chunk_bits}-byte chunks, smaller than the "
                f"superblock chunk size {chunk_size}"
            )
        start = align(body_end, CHUNK_ADDR_SIZE)
        count = -(-inode.size // chunk_size)
        end = start + count * CHUNK_ADDR_SIZE
        if end > len(data):
            raise BootstrapError(f"{where}: {count} chunk addresses run past the bootstrap end")
        addrs = []
        for i in range(count):
            off = start + i * CHUNK_ADDR_SIZE
            lo, hi, blk = _CHUNK_ADDR.unpack_from(data, off)
            device_id = hi & 0xFF
            addr = ChunkAddr(blob_index=device_id - 1, ci_index=((hi >> 8) << 16) | lo, blk_addr=blk)
            if claim:
                self._check_address(inode, i, addr, f"{where} chunk {i} (offset {off:#x})")
            addrs.append(addr)
        if 1 << chunk_bits > chunk_size:
            # nydus-image's page-cache layout: one chunk of next_pow2(size) for contiguous files.
            if inode.size <= chunk_size or 1 << chunk_bits != 1 << (inode.size - 1).bit_length():
                raise BootstrapError(
                    f"{where}: chunk format i_u {i_u:#x} declares {1 << chunk_bits}-byte chunks; expected "
                    f"the superblock chunk size {chunk_size} or next_pow2(i_size {inode.size}) above it"
                )
            _check_contiguous(addrs, chunk_size, where)
        inode.chunks = tuple(addrs)
        if claim and self.check_chunk is not None:
            for i, addr in enumerate(addrs):
                self.check_chunk(inode, i, addr)
        return end

    def _check_address(self, inode: Inode, i: int, addr: ChunkAddr, cwhere: str) -> None:
        device_id = addr.blob_index + 1
        if not 1 <= device_id <= len(self.blobs):
            raise BootstrapError(f"{cwhere}: device id {device_id}, expected 1..{len(self.blobs)}")
        blob = self.blobs[addr.blob_index]
        if addr.blk_addr == EROFS_NULL_ADDR:
            raise BootstrapError(f"{cwhere}: hole (EROFS_NULL_ADDR); RAFS files have no holes")
        if addr.ci_index >= blob.chunk_count:
            raise BootstrapError(
                f"{cwhere}: CI index {addr.ci_index} >= chunk_count "
                f"{blob.chunk_count} of blob {addr.blob_index}"
            )
        piece = min(self.chunk_size, inode.size - i * self.chunk_size)
        if addr.blk_addr * BLOCK_SIZE + piece > blob.uncompressed_size:
            raise BootstrapError(
                f"{cwhere}: block {addr.blk_addr} + {piece} bytes exceeds blob {addr.blob_index} "
                f"uncompressed_size {blob.uncompressed_size}"
            )


class _Frame:
    """A directory being walked: its subdirectories still to visit (nids, names in one bytes string)."""

    __slots__ = ("cursor", "name_pos", "names", "nid", "nids", "path")

    def __init__(self, path: str, nid: int) -> None:
        self.path, self.nid = path, nid
        self.nids = array("Q")
        self.names = bytearray()  # NUL-terminated names (a name holds no NUL)
        self.cursor = self.name_pos = 0

    def add(self, name: bytes, nid: int) -> None:
        self.nids.append(nid)
        self.names += name + b"\0"

    def pending(self) -> bool:
        return self.cursor < len(self.nids)

    def next(self) -> tuple[str, int]:
        end = self.names.index(0, self.name_pos)
        name = self.names[self.name_pos : end].decode("utf-8", "surrogateescape")
        nid = self.nids[self.cursor]
        self.name_pos, self.cursor = end + 1, self.cursor + 1
        return name, nid


def _same_file(a: Inode, b: Inode) -> bool:
    fields = ("mode", "size", "uid", "gid", "mtime", "i_u", "xattrs", "chunks", "target")
    return all(getattr(a, name) == getattr(b, name) for name in fields)


def _check_contiguous(addrs: list[ChunkAddr], chunk_size: int, where: str) -> None:
    """The page-cache layout (chunkbits above the superblock's) needs one contiguous run in one blob."""
    first = addrs[0]
    for i, addr in enumerate(addrs):
        if (
            addr.blob_index != first.blob_index
            or addr.blk_addr != first.blk_addr + i * chunk_size // BLOCK_SIZE
        ):
            raise BootstrapError(
                f"{where}: chunk format declares chunks larger than the superblock chunk size but chunk {i} "
                "is not contiguous with the first"
            )


def _parse_xattrs(area: bytes, where: str) -> dict[str, bytes]:
    if area[4]:
        raise BootstrapError(f"{where}: xattr h_shared_count is {area[4]}; RAFS v6 has no shared xattrs")
    pos, xattrs = XATTR_HEADER_SIZE, {}
    while pos < len(area):
        if pos + 4 > len(area):
            raise BootstrapError(f"{where}: truncated xattr entry at byte {pos} of the xattr area")
        name_len, index, value_size = area[pos], area[pos + 1], u16(area, pos + 2)
        prefix = XATTR_PREFIXES.get(index)
        if prefix is None:
            raise BootstrapError(f"{where}: xattr entry at byte {pos} has unknown name index {index}")
        end = pos + 4 + name_len + value_size
        if end > len(area):
            raise BootstrapError(f"{where}: xattr entry at byte {pos} runs past i_xattr_icount's area")
        suffix = area[pos + 4 : pos + 4 + name_len]
        if index in FULL_NAME_XATTR_INDEXES and suffix:
            raise BootstrapError(
                f"{where}: xattr index {index} ({prefix.decode()}) must have an empty suffix"
            )
        if index not in FULL_NAME_XATTR_INDEXES and not suffix:
            raise BootstrapError(
                f"{where}: xattr entry at byte {pos} has an empty name after {prefix.decode()}"
            )
        name = (prefix + suffix).decode("utf-8", "surrogateescape")
        if name in xattrs:
            raise BootstrapError(f"{where}: xattr {name} appears twice")
        xattrs[name] = bytes(area[pos + 4 + name_len : end])
        padded = align(end, 4)
        if any(area[end:padded]):
            raise BootstrapError(f"{where}: non-zero padding after xattr {name}")
        pos = padded
    if pos != len(area):
        raise BootstrapError(f"{where}: xattr entries end at {pos}, i_xattr_icount gives {len(area)} bytes")
    return xattrs


def _parse_dirents(blocks: list[bytes], size: int, where: str) -> list[tuple[bytes, int, int]]:
    entries: list[tuple[bytes, int, int]] = []
    for k, block in enumerate(blocks):
        entries.extend(
            _parse_dirent_block(block, final=k == len(blocks) - 1, where=f"{where} dirent block {k}")
        )
    for (a, _, _), (b, _, _) in itertools.pairwise(entries):
        if not a < b:
            raise BootstrapError(f"{where}: dirent names out of byte order: {a!r} before {b!r}")
    names = [name for name, _, _ in entries]
    if b"." not in names or b".." not in names:
        raise BootstrapError(f"{where}: directory lacks '.' or '..'")
    return entries


def _parse_dirent_block(block: bytes, final: bool, where: str) -> Iterator[tuple[bytes, int, int]]:
    if len(block) < DIRENT_SIZE:
        raise BootstrapError(f"{where}: {len(block)} bytes, too short for a dirent")
    first_nameoff = u16(block, 8)
    if first_nameoff % DIRENT_SIZE or not DIRENT_SIZE <= first_nameoff < len(block):
        raise BootstrapError(
            f"{where}: first e_nameoff {first_nameoff} is not a multiple of 12 inside the block"
        )
    count = first_nameoff // DIRENT_SIZE
    offsets = [u16(block, i * DIRENT_SIZE + 8) for i in range(count)]
    for i in range(count):
        start = offsets[i]
        end = offsets[i + 1] if i + 1 < count else len(block)
        if not first_nameoff <= start < end <= len(block):
            raise BootstrapError(
                f"{where}: dirent {i} e_nameoff {start} is out of order or outside the block"
            )
        name = block[start:end]
        if i + 1 == count:
            nul = name.find(b"\0")
            if nul >= 0:
                if final:
                    raise BootstrapError(f"{where}: last name has NUL padding inside i_size")
                if any(name[nul:]):
                    raise BootstrapError(f"{where}: non-zero bytes after the last name")
                name = name[:nul]
        if not name or b"/" in name or b"\0" in name:
            raise BootstrapError(f"{where}: dirent {i} has an invalid name {name!r}")
        ftype = block[i * DIRENT_SIZE + 10]
        if block[i * DIRENT_SIZE + 11]:
            raise BootstrapError(f"{where}: dirent {i} ({name!r}) has a non-zero reserved byte")
        if not 1 <= ftype <= 7:
            raise BootstrapError(f"{where}: dirent {i} ({name!r}) has file type {ftype}, expected 1..7")
        yield name, u64(block, i * DIRENT_SIZE), ftype
