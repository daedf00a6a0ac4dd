"""A minimal FlatBuffers reader written from the format description (not the `flatbuffers` package):
enough to decode soci's zTOC in the tests, independently of acceld's writer and reader.

Layout: the buffer starts with a uoffset (u32) to the root table. A table starts with an soffset
(i32): table position minus that value is its vtable: u16 vtable size, u16 table size, then one
u16 per field (offset of the field inside the table, 0 = absent). Strings and vectors are reached
through a uoffset stored in the field (relative to the field's own position) and start with a
u32 length; a vector of tables holds uoffsets (relative to each element's position).
Alignment is checked as a strict verifier does: scalars at a multiple of their size, tables,
strings and vectors at a multiple of 4.
"""

from __future__ import annotations

import struct


class FlatTable:
    def __init__(self, buf: bytes, pos: int) -> None:
        assert pos % 4 == 0, f"table at {pos} is not 4-aligned"
        self.buf = buf
        self.pos = pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vsize = struct.unpack_from("<H", buf, vtable)[0]
        self._vtable = vtable

    @classmethod
    def root(cls, buf: bytes) -> FlatTable:
        return cls(buf, struct.unpack_from("<I", buf, 0)[0])

    def _field(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self._vsize:
            return None
        offset = struct.unpack_from("<H", self.buf, self._vtable + entry)[0]
        return self.pos + offset if offset else None

    def _target(self, at: int) -> int:
        assert at % 4 == 0, f"uoffset at {at} is not 4-aligned"
        target = at + struct.unpack_from("<I", self.buf, at)[0]
        assert target % 4 == 0, f"object at {target} is not 4-aligned"
        return target

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._field(slot)
        if at is None:
            return default
        assert at % struct.calcsize(fmt) == 0, f"scalar at {at} is not aligned"
        return int(struct.unpack_from("<" + fmt, self.buf, at)[0])

    def _string_at(self, at: int) -> str:
        start = self._target(at)
        length = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4 : start + 4 + length].decode("utf-8", "surrogateescape")

    def string(self, slot: int) -> str | None:
        at = self._field(slot)
        return None if at is None else self._string_at(at)

    def table(self, slot: int) -> FlatTable | None:
        at = self._field(slot)
        return None if at is None else FlatTable(self.buf, self._target(at))

    def _vector(self, slot: int) -> tuple[int, int]:
        at = self._field(slot)
        if at is None:
            return 0, 0
        start = self._target(at)
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def tables(self, slot: int) -> list[FlatTable]:
        start, count = self._vector(slot)
        return [FlatTable(self.buf, self._target(start + 4 * n)) for n in range(count)]

    def strings(self, slot: int) -> list[str]:
        start, count = self._vector(slot)
        return [self._string_at(start + 4 * n) for n in range(count)]

    def bytes(self, slot: int) -> bytes:
        start, count = self._vector(slot)
        return self.buf[start : start + count]
