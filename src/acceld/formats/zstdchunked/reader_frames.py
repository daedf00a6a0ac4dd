"""Walks the zstd frames of a blob from their headers (RFC 8878) and decompresses each one.

Frame ends are found from the frame and block headers alone, so a reader learns exactly where
every frame starts, and each frame is decompressed in bounded pieces (a frame may hold a
gigabyte of zeros).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from acceld.formats.zstdchunked.errors import invalid

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ = 1 << 17


def frames(blob: Path, end_of_data: int) -> Iterator[tuple[int, int, Iterator[bytes]]]:
    """(compressed start, compressed end, content pieces) of each zstd frame before `end_of_data`."""
    with blob.open("rb") as f:
        start = 0
        while start < end_of_data:
            end = _frame_end(f, start, end_of_data)
            f.seek(start)
            frame = io.BufferedReader(BoundedReader(f, end - start), _READ)
            yield start, end, _pieces(zstandard.ZstdDecompressor().stream_reader(frame), start)
            start = end


def _frame_end(f: BinaryIO, start: int, limit: int) -> int:
    """End offset of the zstd frame at `start`, from its frame and block headers (RFC 8878)."""
    f.seek(start)
    header = f.read(6)
    if len(header) < 6 or header[:4] != ZSTD_MAGIC:
        raise invalid(f"no zstd frame starts at offset {start}")
    descriptor = header[4]
    single_segment = descriptor >> 5 & 1
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    position = start + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size_bytes
    while True:
        f.seek(position)
        block = f.read(3)
        if len(block) < 3:
            raise invalid(f"truncated zstd frame at offset {start}")
        value = int.from_bytes(block, "little")
        kind, size = value >> 1 & 3, value >> 3
        if kind == 3:
            raise invalid(f"reserved zstd block type in the frame at offset {start}")
        position += 3 + (1 if kind == 1 else size)
        if value & 1:
            break
    position += 4 if descriptor >> 2 & 1 else 0  # content checksum
    if position > limit:
        raise invalid(f"zstd frame at offset {start} runs into the TOC")
    return position


class BoundedReader(io.RawIOBase):
    """The next `size` bytes of `f`, as a stream of their own."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(min(len(buffer), self._left))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _pieces(reader: zstandard.ZstdDecompressionReader, start: int) -> Iterator[bytes]:
    try:
        while piece := reader.read(1 << 20):
            yield piece
    except zstandard.ZstdError as exc:
        raise invalid(f"bad zstd frame at offset {start}: {exc}") from None
