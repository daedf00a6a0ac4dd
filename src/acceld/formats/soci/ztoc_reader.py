"""Reading a zTOC back (`acceld check`), with the `flatbuffers` package (see `ztoc` for the schema)."""

from __future__ import annotations

from typing import Any

from flatbuffers import number_types
from flatbuffers.table import Table

from acceld.formats.driver import FormatError
from acceld.formats.soci.toc import FileMetadata
from acceld.formats.soci.ztoc import GZIP, Ztoc


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
