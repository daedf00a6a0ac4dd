"""The zTOC flatbuffer (soci's `ztoc.fbs`): writing it with the `flatbuffers` builder, reading it back.

Tables and field ids: Ztoc {0 version, 1 build_tool_identifier, 2 compressed_archive_size,
3 uncompressed_archive_size, 4 toc, 5 compression_info}; TOC {0 metadata}; FileMetadata {0 name,
1 type, 2 uncompressed_offset, 3 uncompressed_size, 4 linkname, 5 mode, 6 uid, 7 gid, 8 uname,
9 gname, 10 mod_time, 11 devmajor, 12 devminor, 13 xattrs}; Xattr {0 key, 1 value};
CompressionInfo {0 compression_algorithm (byte enum, Gzip = 1 default, Uncompressed = 2),
1 max_span_id, 2 span_digests, 3 checkpoints}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import flatbuffers
from flatbuffers import number_types
from flatbuffers.table import Table

from acceld.formats.driver import FormatError
from acceld.formats.soci.toc import FileMetadata

VERSION = "0.9"
GZIP, UNCOMPRESSED = 1, 2
ALGORITHMS = {GZIP: "gzip", UNCOMPRESSED: "uncompressed"}


@dataclass(frozen=True)
class Ztoc:
    version: str
    build_tool: str
    compressed_archive_size: int
    uncompressed_archive_size: int
    entries: Sequence[FileMetadata]
    algorithm: int
    max_span_id: int
    span_digests: Sequence[str]
    checkpoints: bytes


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _offsets(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())


def _file(builder: flatbuffers.Builder, entry: FileMetadata) -> int:
    texts = (entry.name, entry.type, entry.linkname, entry.uname, entry.gname, entry.mod_time)
    # repeated values (types, owners, times, empty strings) are written once and shared
    name, kind, linkname, uname, gname, mod_time = [builder.CreateSharedString(_text(t)) for t in texts]
    xattrs = 0
    if entry.xattrs:
        tables = []
        for key, value in entry.xattrs:
            key_at, value_at = (
                builder.CreateSharedString(_text(key)),
                builder.CreateSharedString(_text(value)),
            )
            builder.StartObject(2)
            builder.PrependUOffsetTRelativeSlot(0, key_at, 0)
            builder.PrependUOffsetTRelativeSlot(1, value_at, 0)
            tables.append(builder.EndObject())
        xattrs = _offsets(builder, tables)
    builder.StartObject(14)
    builder.PrependUOffsetTRelativeSlot(0, name, 0)
    builder.PrependUOffsetTRelativeSlot(1, kind, 0)
    builder.PrependInt64Slot(2, entry.uncompressed_offset, 0)
    builder.PrependInt64Slot(3, entry.uncompressed_size, 0)
    builder.PrependUOffsetTRelativeSlot(4, linkname, 0)
    builder.PrependInt64Slot(5, entry.mode, 0)
    builder.PrependUint32Slot(6, entry.uid, 0)
    builder.PrependUint32Slot(7, entry.gid, 0)
    builder.PrependUOffsetTRelativeSlot(8, uname, 0)
    builder.PrependUOffsetTRelativeSlot(9, gname, 0)
    builder.PrependUOffsetTRelativeSlot(10, mod_time, 0)
    builder.PrependInt64Slot(11, entry.devmajor, 0)
    builder.PrependInt64Slot(12, entry.devminor, 0)
    if xattrs:
        builder.PrependUOffsetTRelativeSlot(13, xattrs, 0)
    return int(builder.EndObject())


class ZtocWriter:
    """Builds a zTOC: file entries as the tar scan finds them, then the rest in `finish`."""

    def __init__(self) -> None:
        self._builder = flatbuffers.Builder(1 << 20)
        self._files: list[int] = []

    def add(self, entry: FileMetadata) -> None:
        self._files.append(_file(self._builder, entry))

    @property
    def count(self) -> int:
        return len(self._files)

    def finish(
        self,
        header: Ztoc,
        out: BinaryIO,
        checkpoints_size: int,
        write_checkpoints: Callable[[BinaryIO], object],
    ) -> None:
        """Write the zTOC to `out` (`header.entries` and `header.checkpoints` are ignored).

        The `checkpoints` vector, the bulk of a zTOC (32 KiB per checkpoint), is not built in
        memory: the builder's buffer ends with the tables, and the vector follows it in the file,
        written by `write_checkpoints` (exactly `checkpoints_size` bytes, streamed from the window
        file). Its uoffset, a forward offset like any other, is patched into CompressionInfo.
        """
        table = _finish(self._builder, self._files, header)
        data = bytearray(self._builder.Output())
        position = len(data) - table
        vtable = position - int.from_bytes(data[position : position + 4], "little", signed=True)
        slot = position + int.from_bytes(
            data[vtable + 4 + 2 * _CHECKPOINTS_SLOT : vtable + 6 + 2 * _CHECKPOINTS_SLOT], "little"
        )
        vector = len(data)  # Finish aligned the buffer to at least 4 bytes
        data[slot : slot + 4] = (vector - slot).to_bytes(4, "little")
        out.write(data)
        out.write(checkpoints_size.to_bytes(4, "little"))
        write_checkpoints(out)


def write_ztoc(header: Ztoc, out: BinaryIO) -> None:
    """The zTOC of `header`, entries and checkpoints included."""
    writer = ZtocWriter()
    for entry in header.entries:
        writer.add(entry)
    writer.finish(header, out, len(header.checkpoints), lambda target: target.write(header.checkpoints))


_CHECKPOINTS_SLOT = 3
_PLACEHOLDER = 1  # a non-default value, so the builder writes the slot that is patched later


def _finish(builder: flatbuffers.Builder, files: list[int], header: Ztoc) -> int:
    """Every table but the checkpoint vector; returns CompressionInfo's offset from the end."""
    files_vector = _offsets(builder, files)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, files_vector, 0)
    toc = builder.EndObject()
    digests = _offsets(builder, [builder.CreateString(digest) for digest in header.span_digests])
    builder.StartObject(4)
    builder.PrependInt8Slot(0, header.algorithm, GZIP)
    builder.PrependInt32Slot(1, header.max_span_id, 0)
    builder.PrependUOffsetTRelativeSlot(2, digests, 0)
    builder.PrependUint32Slot(_CHECKPOINTS_SLOT, _PLACEHOLDER, 0)
    compression = int(builder.EndObject())
    version, tool = builder.CreateString(header.version), builder.CreateString(_text(header.build_tool))
    builder.StartObject(6)
    builder.PrependUOffsetTRelativeSlot(0, version, 0)
    builder.PrependUOffsetTRelativeSlot(1, tool, 0)
    builder.PrependInt64Slot(2, header.compressed_archive_size, 0)
    builder.PrependInt64Slot(3, header.uncompressed_archive_size, 0)
    builder.PrependUOffsetTRelativeSlot(4, toc, 0)
    builder.PrependUOffsetTRelativeSlot(5, compression, 0)
    builder.Finish(builder.EndObject())
    return compression


# -- reading -------------------------------------------------------------------------------------


class _Table:
    def __init__(self, buf: bytes, pos: int) -> None:
        if not 0 <= pos <= len(buf) - 4:
            raise FormatError(f"zTOC: table offset {pos} outside the buffer")
        self._t = Table(buf, pos)
        self._buf = buf

    def _field(self, slot: int) -> int:
        return int(self._t.Offset(4 + 2 * slot))

    def scalar(self, slot: int, flags: Any, default: int = 0) -> int:
        at = self._field(slot)
        return int(self._t.Get(flags, at + self._t.Pos)) if at else default

    def string(self, slot: int) -> str:
        at = self._field(slot)
        return self._t.String(at + self._t.Pos).decode("utf-8", "surrogateescape") if at else ""

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self._buf, self._t.Indirect(at + self._t.Pos)) if at else None

    def tables(self, slot: int) -> list[_Table]:
        at = self._field(slot)
        if not at:
            return []
        start, count = self._t.Vector(at), self._t.VectorLen(at)
        return [_Table(self._buf, self._t.Indirect(start + 4 * n)) for n in range(count)]

    def strings(self, slot: int) -> list[str]:
        at = self._field(slot)
        if not at:
            return []
        start, count = self._t.Vector(at), self._t.VectorLen(at)
        return [self._t.String(start + 4 * n).decode("utf-8", "surrogateescape") for n in range(count)]

    def byte_vector(self, slot: int) -> bytes:
        at = self._field(slot)
        if not at:
            return b""
        start, count = self._t.Vector(at), self._t.VectorLen(at)
        if start + count > len(self._buf):
            raise FormatError("zTOC: byte vector runs past the end of the buffer")
        return bytes(self._buf[start : start + count])


_I64, _U32, _I32, _I8 = (number_types.Int64Flags, number_types.Uint32Flags, number_types.Int32Flags,
                         number_types.Int8Flags)  # fmt: skip


def read_ztoc(data: bytes) -> Ztoc:
    """Decode a zTOC; FormatError when it is not one."""
    try:
        return _read(data)
    except FormatError:
        raise
    except Exception as exc:  # the flatbuffers reader raises struct/index errors on garbage
        raise FormatError(f"zTOC is not a valid flatbuffer: {type(exc).__name__}: {exc}") from None


def _read(data: bytes) -> Ztoc:
    if len(data) < 8:
        raise FormatError("zTOC is too short")
    root = _Table(data, int.from_bytes(data[:4], "little"))
    toc, compression = root.table(4), root.table(5)
    if toc is None or compression is None:
        raise FormatError("zTOC lacks its toc or compression_info")
    entries = []
    for item in toc.tables(0):
        xattrs = tuple((x.string(0), x.string(1)) for x in item.tables(13))
        entries.append(
            FileMetadata(
                name=item.string(0),
                type=item.string(1),
                uncompressed_offset=item.scalar(2, _I64),
                uncompressed_size=item.scalar(3, _I64),
                linkname=item.string(4),
                mode=item.scalar(5, _I64),
                uid=item.scalar(6, _U32),
                gid=item.scalar(7, _U32),
                uname=item.string(8),
                gname=item.string(9),
                mod_time=item.string(10),
                devmajor=item.scalar(11, _I64),
                devminor=item.scalar(12, _I64),
                xattrs=xattrs,
            )
        )
    return Ztoc(
        version=root.string(0),
        build_tool=root.string(1),
        compressed_archive_size=root.scalar(2, _I64),
        uncompressed_archive_size=root.scalar(3, _I64),
        entries=entries,
        algorithm=compression.scalar(0, _I8, GZIP),
        max_span_id=compression.scalar(1, _I32),
        span_digests=compression.strings(2),
        checkpoints=compression.byte_vector(3),
    )
