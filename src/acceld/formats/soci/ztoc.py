"""The zTOC flatbuffer (soci's `ztoc.fbs`): writing it (`flatwriter`), reading it back (`flatbuffers`).

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

from flatbuffers import number_types
from flatbuffers.table import Table

from acceld.formats.driver import FormatError
from acceld.formats.soci.flatwriter import BYTE, INT, LONG, OFFSET, UINT, Field, FlatWriter
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


class ZtocWriter:
    """Builds a zTOC: file entries as the tar scan finds them, then the rest in `finish`.

    Memory: the encoded tables (≈ 150 bytes per entry) and the strings written once and shared
    (types, owners, times, link targets, PAX records; names are not shared).
    """

    def __init__(self) -> None:
        self._writer = FlatWriter()
        self._checkpoints = self._writer.trailing_vector()
        self._files: list[int] = []
        self._shared: dict[str, int] = {}

    def _shared_string(self, value: str) -> int:
        at = self._shared.get(value)
        if at is None:
            at = self._shared[value] = self._writer.string(_text(value))
        return at

    def add(self, entry: FileMetadata) -> None:
        writer, shared = self._writer, self._shared_string
        fields: list[Field] = [
            (0, OFFSET, writer.string(_text(entry.name))),
            (1, OFFSET, shared(entry.type)),
            (4, OFFSET, shared(entry.linkname)),
            (8, OFFSET, shared(entry.uname)),
            (9, OFFSET, shared(entry.gname)),
            (10, OFFSET, shared(entry.mod_time)),
        ]
        if entry.xattrs:
            pairs = [(shared(key), shared(value)) for key, value in entry.xattrs]
            tables = [writer.table([(0, OFFSET, key), (1, OFFSET, value)]) for key, value in pairs]
            fields.append((13, OFFSET, writer.offsets(tables)))
        for slot, kind, value in (
            (2, LONG, entry.uncompressed_offset),
            (3, LONG, entry.uncompressed_size),
            (5, LONG, entry.mode),
            (6, UINT, entry.uid),
            (7, UINT, entry.gid),
            (11, LONG, entry.devmajor),
            (12, LONG, entry.devminor),
        ):
            if value:  # scalars at their default are left out, as flatbuffers writers do
                fields.append((slot, kind, value))
        self._files.append(writer.table(fields))

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
        memory: its bytes follow the buffer in the file, written by `write_checkpoints` (exactly
        `checkpoints_size` bytes, streamed from the window file).
        """
        writer = self._writer
        toc = writer.table([(0, OFFSET, writer.offsets(self._files))])
        digests = writer.offsets([writer.string(_text(digest)) for digest in header.span_digests])
        info: list[Field] = []
        if header.algorithm != GZIP:
            info.append((0, BYTE, header.algorithm))
        if header.max_span_id:
            info.append((1, INT, header.max_span_id))
        info += [(2, OFFSET, digests), (3, OFFSET, self._checkpoints)]
        compression = writer.table(info)
        root: list[Field] = [
            (0, OFFSET, writer.string(_text(header.version))),
            (1, OFFSET, writer.string(_text(header.build_tool))),
        ]
        if header.compressed_archive_size:
            root.append((2, LONG, header.compressed_archive_size))
        if header.uncompressed_archive_size:
            root.append((3, LONG, header.uncompressed_archive_size))
        root += [(4, OFFSET, toc), (5, OFFSET, compression)]
        out.write(writer.finish(writer.table(root), checkpoints_size))
        write_checkpoints(out)


def write_ztoc(header: Ztoc, out: BinaryIO) -> None:
    """The zTOC of `header`, entries and checkpoints included."""
    writer = ZtocWriter()
    for entry in header.entries:
        writer.add(entry)
    writer.finish(header, out, len(header.checkpoints), lambda target: target.write(header.checkpoints))


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
