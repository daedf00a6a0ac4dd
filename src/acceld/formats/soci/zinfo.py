"""The `checkpoints` bytes of a zTOC: soci's gzip zinfo blob (version 2) and its tar zinfo flatbuffer.

gzip (little-endian): int32 n, int64 span_size, then n * (int64 in, int64 out, uint8 bits,
32 KiB window) — 12 + n * 32785 bytes. Uncompressed tar: a flatbuffer TarZinfo {0 version:
int32 = 2, 1 span_size: int64, 2 size: int64}; spans are fixed slices of the layer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from acceld.formats.checkpoints import WINDOW_SIZE, Checkpoint, WindowStore
from acceld.formats.driver import FormatError
from acceld.formats.soci.flatwriter import INT, LONG, Field, FlatWriter

HEADER = struct.Struct("<iq")
POINT = struct.Struct("<qqB")
POINT_SIZE = POINT.size + WINDOW_SIZE  # 32785
TAR_ZINFO_VERSION = 2


@dataclass(frozen=True)
class ZinfoPoint:
    compressed_offset: int
    uncompressed_offset: int
    bits: int
    window: bytes


def gzip_zinfo_size(count: int) -> int:
    return HEADER.size + count * POINT_SIZE


def write_gzip_zinfo(
    out: BinaryIO, span_size: int, points: Sequence[Checkpoint], windows: WindowStore
) -> None:
    """Write the zinfo blob (`gzip_zinfo_size(len(points))` bytes), windows read one at a time."""
    out.write(HEADER.pack(len(points), span_size))
    for number, point in enumerate(points):
        out.write(POINT.pack(point.compressed_offset, point.uncompressed_offset, point.bits))
        out.write(windows.get(number))


def read_gzip_zinfo(blob: bytes) -> tuple[int, list[ZinfoPoint]]:
    """(span_size, checkpoints) of a version 2 blob; version 1 (without checkpoint 0) is recognised."""
    if len(blob) < HEADER.size:
        raise FormatError("zinfo blob is too short")
    count, span_size = HEADER.unpack_from(blob, 0)
    points = []
    if len(blob) == gzip_zinfo_size(count - 1) and count > 0:  # version 1: checkpoint 0 implied
        points.append(ZinfoPoint(10, 0, 0, bytes(WINDOW_SIZE)))
        count -= 1
    elif len(blob) != gzip_zinfo_size(count):
        raise FormatError(
            f"zinfo blob has {len(blob)} bytes, {count} checkpoints need {gzip_zinfo_size(count)}"
        )
    at = HEADER.size
    for _ in range(count):
        compressed, uncompressed, bits = POINT.unpack_from(blob, at)
        at += POINT.size
        points.append(ZinfoPoint(compressed, uncompressed, bits, bytes(blob[at : at + WINDOW_SIZE])))
        at += WINDOW_SIZE
    return span_size, points


def tar_zinfo(span_size: int, size: int) -> bytes:
    writer = FlatWriter()
    candidates: list[Field] = [(0, INT, TAR_ZINFO_VERSION), (1, LONG, span_size), (2, LONG, size)]
    fields = [field for field in candidates if field[2]]  # scalars at their default are left out
    return bytes(writer.finish(writer.table(fields)))


def read_tar_zinfo(blob: bytes) -> tuple[int, int, int]:
    """(version, span_size, size) of a tar zinfo flatbuffer."""
    from flatbuffers import number_types  # only `acceld check` reads: workers need not import it
    from flatbuffers.table import Table

    try:
        table = Table(blob, int.from_bytes(blob[:4], "little"))
        values = []
        for slot, flags in (
            (0, number_types.Int32Flags),
            (1, number_types.Int64Flags),
            (2, number_types.Int64Flags),
        ):
            at = table.Offset(4 + 2 * slot)
            values.append(int(table.Get(flags, at + table.Pos)) if at else 0)
    except Exception as exc:
        raise FormatError(f"tar zinfo is not a valid flatbuffer: {exc}") from None
    return values[0], values[1], values[2]


def tar_span_count(size: int, span_size: int) -> int:
    return max(1, -(-size // span_size))
