"""A FlatBuffers encoder for a fixed schema, one `struct.pack` per object.

Built back to front as the format intends: each object is prepended, so an object may refer
(through an unsigned, forward uoffset) only to objects created before it. Positions are
distances from the end of the buffer (`at`), as in the reference builders; every object starts
at a multiple of its alignment from the end, and `finish` pads the front so that the buffer's
length is a multiple of 8 — which makes the distances from the start aligned too.

The bytes are kept reversed in one bytearray (a prepend is an append of the reversed object)
and turned around once in `finish`. Vtables are shared between tables of the same shape.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# field kinds: (struct code, size)
LONG, UINT, INT, BYTE, OFFSET = "q", "I", "i", "b", "o"
_SIZES = {LONG: 8, UINT: 4, INT: 4, BYTE: 1, OFFSET: 4}
_STRUCT_CODES = {LONG: "q", UINT: "I", INT: "i", BYTE: "b", OFFSET: "I"}

Field = tuple[int, str, int]  # (slot, kind, value); for OFFSET the value is the target's `at`


class _Shape:
    """How tables with one set of fields are laid out: field order, struct format, vtable."""

    def __init__(self, slots_kinds: tuple[tuple[int, str], ...]) -> None:
        wide = [sk for sk in slots_kinds if sk[1] == LONG]
        narrow = [sk for sk in slots_kinds if _SIZES[sk[1]] == 4]
        tiny = [sk for sk in slots_kinds if sk[1] == BYTE]
        # the soffset is 4 bytes: one 4-byte field fills the gap before the 8-aligned longs
        order = narrow[:1] + wide + narrow[1:] + tiny if wide else narrow + tiny
        self.align = 8 if wide else 4
        self.order = [slots_kinds.index(sk) for sk in order]  # positions in the caller's field list
        offsets: dict[int, int] = {}
        position = 4
        codes = ["<i"]
        if wide and not narrow:
            codes.append("4x")
            position = 8
        self.field_offsets: list[int] = []
        for slot, kind in order:
            offsets[slot] = position
            self.field_offsets.append(position)
            codes.append(_STRUCT_CODES[kind])
            position += _SIZES[kind]
        self.size = position
        self.format = struct.Struct("".join(codes))
        self.offset_fields = [n for n, (_, kind) in enumerate(order) if kind == OFFSET]
        slots = max((slot for slot, _ in slots_kinds), default=-1) + 1
        self.vtable = struct.pack(
            f"<HH{slots}H", 4 + 2 * slots, self.size, *(offsets.get(slot, 0) for slot in range(slots))
        )


class FlatWriter:
    def __init__(self) -> None:
        self._reversed = bytearray()
        self._shapes: dict[tuple[tuple[int, str], ...], _Shape] = {}
        self._vtables: dict[bytes, int] = {}

    @property
    def at(self) -> int:
        """The distance from the end of what has been written so far."""
        return len(self._reversed)

    def _prepend(self, data: bytes, align: int) -> int:
        """Prepend `data` (then padding up to `align`); the position of its first byte."""
        pad = -(len(self._reversed) + len(data)) % align
        if pad:
            self._reversed += bytes(pad)
        self._reversed += data[::-1]
        return len(self._reversed)

    def string(self, value: bytes) -> int:
        return self._prepend(struct.pack("<I", len(value)) + value + b"\0", 4)

    def offsets(self, targets: Sequence[int]) -> int:
        """A vector of uoffsets to the objects at `targets`."""
        count = len(targets)
        start = self.at + 4 + 4 * count  # every object is at least 4-aligned: no padding
        element = start - 4
        values = [element - 4 * n - target for n, target in enumerate(targets)]
        return self._prepend(struct.pack(f"<I{count}I", count, *values), 4)

    def trailing_vector(self) -> int:
        """A byte vector whose bytes follow the buffer (streamed after it; `finish` writes its
        length). It must be the first object: its length is the buffer's last four bytes."""
        if self._reversed:
            raise ValueError("the trailing vector must be the first object")
        return self._prepend(bytes(4), 4)

    def table(self, fields: Sequence[Field]) -> int:
        """A table of the present `fields` (leave out those at their default)."""
        key = tuple((slot, kind) for slot, kind, _ in fields)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(key)
        vtable = self._vtables.get(shape.vtable)
        if vtable is None:
            vtable = self._vtables[shape.vtable] = self._prepend(shape.vtable, 4)
        pad = -(len(self._reversed) + shape.size) % shape.align
        table = len(self._reversed) + pad + shape.size
        values = [fields[n][2] for n in shape.order]
        for n in shape.offset_fields:
            values[n] = table - shape.field_offsets[n] - values[n]
        if pad:
            self._reversed += bytes(pad)
        self._reversed += shape.format.pack(vtable - table, *values)[::-1]
        return table

    def finish(self, root: int, trailing_size: int | None = None) -> bytearray:
        """The buffer with its root uoffset in front; its length is a multiple of 8, and ends with
        the length of the trailing vector, if any (its `trailing_size` bytes go right after)."""
        pad = -(len(self._reversed) + 4) % 8
        self._reversed += bytes(pad)
        total = len(self._reversed) + 4
        self._reversed += struct.pack("<I", total - root)[::-1]
        self._reversed.reverse()
        data, self._reversed = self._reversed, bytearray()
        if trailing_size is not None:
            data[-4:] = struct.pack("<I", trailing_size)
        return data
