"""Serialise a RAFS tree into a RAFS v6 bootstrap (§5): an EROFS image whose files live in blobs.

Layout: superblock, extended superblock, device table, blob table, prefetch table, an empty
block, then inodes (root = nid 128) with inline xattrs, inline directory/symlink tails and chunk
indexes, then whole data blocks of large directories and symlinks, then the chunk table.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from acceld.formats.driver import FormatError
from acceld.formats.nydus.layout import (
    BLOB_ENTRY_SIZE,
    BLOB_INLINED_CHUNK_DIGEST,
    BLOCK,
    CHUNK_COMPRESSED,
    CHUNK_FORMAT_INDEXES,
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


def build_bootstrap(root: Inode, settings: BootstrapSettings) -> bytes:
    blobs = list(settings.blobs)
    blob_index = {blob.blob_id: i for i, blob in enumerate(blobs)}
    chunk_bits = settings.chunk_size.bit_length() - 1
    order, records, parents, s_inos = _number_and_order(root)
    for record in order:
        record.plan()

    blob_table_offset = align(DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * len(blobs), BLOCK)
    blob_table_size = BLOB_ENTRY_SIZE * len(blobs)
    prefetch_offset = blob_table_offset + blob_table_size
    prefetch_count_max = len(settings.prefetch_patterns) if blobs else 0
    # the prefetch table needs nids, which need meta_addr: reserve room for every pattern
    meta_addr = align(prefetch_offset + 4 * prefetch_count_max, BLOCK) if blobs else 0

    cursor = meta_addr + BLOCK
    for record in order:
        cursor = align(cursor, 32)
        if record.head_size <= BLOCK and cursor % BLOCK + record.head_size > BLOCK:
            cursor = align(cursor, BLOCK)
        record.position = cursor
        cursor += record.record_size
    block_cursor = align(cursor, BLOCK)
    for record in order:
        if record.plain_blocks:
            record.data_block = block_cursor // BLOCK
            block_cursor += record.plain_blocks * BLOCK

    def nid(inode: Inode) -> int:
        return (records[id(inode)].position - meta_addr) // 32

    if nid(root) != ROOT_NID:
        raise AssertionError("root inode must be nid 128")

    chunk_rows: dict[tuple[bytes, int], bytes] = {}
    for record in order:
        for number, chunk in enumerate(record.inode.chunks):
            key = (chunk.digest, blob_index[chunk.blob_id])
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
    chunk_table_offset = align(block_cursor, BLOCK)
    chunk_table = b"".join(chunk_rows[key] for key in sorted(chunk_rows))
    image = bytearray(align(chunk_table_offset + len(chunk_table), BLOCK))
    image[chunk_table_offset : chunk_table_offset + len(chunk_table)] = chunk_table

    for record in order:
        _write_inode(image, record, parents, blob_index, chunk_bits, nid)

    prefetch: list[int] = []
    for pattern in settings.prefetch_patterns[:prefetch_count_max]:
        target = lookup(root, pattern)
        if target is not None and nid(target) not in prefetch:
            prefetch.append(nid(target))
    struct.pack_into(f"<{len(prefetch)}I", image, prefetch_offset, *prefetch)

    position = len(image)
    for index, blob in enumerate(blobs):
        mapped = align(position, FLAT_DEVICE_ALIGN) // BLOCK
        blocks = blob.uncompressed_size // BLOCK
        position = (mapped + blocks) * BLOCK
        struct.pack_into(
            "<64sII",
            image,
            DEVICE_TABLE_OFFSET + DEVICE_SLOT_SIZE * index,
            blob.blob_id.encode("ascii"),
            blocks,
            mapped,
        )
        image[
            blob_table_offset + BLOB_ENTRY_SIZE * index : blob_table_offset + BLOB_ENTRY_SIZE * (index + 1)
        ] = blob.pack(index)

    has_xattr = settings.always_has_xattr or any(r.inode.xattrs for r in order)
    flags = (
        FLAG_COMPRESSION[settings.compressor]
        | FLAG_HASH[settings.digester]
        | FLAG_EXPLICIT_UID_GID
        | FLAG_ENCRYPTION_NONE
        | (FLAG_HAS_XATTR if has_xattr else 0)
        | (FLAG_INLINED_CHUNK_DIGEST if all(b.features & BLOB_INLINED_CHUNK_DIGEST for b in blobs) else 0)
    )
    struct.pack_into(
        "<IIIBBHQQIIII16s16sIHHH",
        image,
        SB_OFFSET,
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
    struct.pack_into(
        "<QQIIQQQI",
        image,
        EXT_SB_OFFSET,
        flags,
        blob_table_offset,
        blob_table_size,
        settings.chunk_size,
        chunk_table_offset,
        len(chunk_table),
        prefetch_offset,
        4 * len(prefetch),
    )
    return bytes(image)


def _write_inode(
    image: bytearray,
    record: _Record,
    parents: dict[int, Inode],
    blob_index: dict[str, int],
    chunk_bits: int,
    nid: Callable[[Inode], int],
) -> None:
    inode = record.inode
    if inode.is_reg:
        i_u = CHUNK_FORMAT_INDEXES | (chunk_bits - 12)
    elif inode.is_dir or inode.is_symlink:
        i_u = record.data_block
    else:
        i_u = inode.rdev
    icount = (len(record.xattrs) - 12) // 4 + 1 if record.xattrs else 0
    pos = record.position
    struct.pack_into(
        "<HHHHQIIIIQII",
        image,
        pos,
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
    body = pos + INODE_SIZE
    image[body : body + len(record.xattrs)] = record.xattrs
    body += len(record.xattrs)
    if inode.is_reg:
        body = pos + align(INODE_SIZE + len(record.xattrs), 8)
        for chunk in inode.chunks:
            device = (blob_index[chunk.blob_id] + 1) & 0xFF | ((chunk.index >> 16) & 0xFF) << 8
            struct.pack_into(
                "<HHI", image, body, chunk.index & 0xFFFF, device, chunk.uncompressed_offset // BLOCK
            )
            body += 8
        return
    if inode.is_dir:
        data = _dirent_data(record, parents, nid)
    elif inode.is_symlink:
        data = inode.target
    else:
        return
    plain = record.plain_blocks * BLOCK
    start = record.data_block * BLOCK
    head = data[:plain]
    image[start : start + len(head)] = head
    tail = data[plain:] if record.layout == LAYOUT_FLAT_INLINE else b""
    image[body : body + len(tail)] = tail


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
