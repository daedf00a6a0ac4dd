"""An eStargz layer's tar without the entries that are eStargz's own, not the image's files.

An eStargz blob is a valid tar.gz whose tar also holds the TOC (`stargz.index.json`) and a
landmark (`.prefetch.landmark` or `.no.prefetch.landmark`). Converting such a layer into another
format must give the image's real filesystem, so those entries are dropped from the stream; every
other byte passes through unchanged. The Go writer gives them plain USTAR headers, so only such an
entry at the top level, with no extended header before it, is dropped.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from acceld.formats.estargz.order import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from acceld.formats.tarfields import cstring, parse_number

_BLOCK = 512
_COPY_SIZE = 1 << 20
_METADATA_NAMES = frozenset(name.encode() for name in (TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK))
_EXTENDED_TYPES = frozenset(b"xgLK")


def without_estargz_metadata(tar: BinaryIO) -> BinaryIO:
    """The tar stream `tar` with eStargz's TOC and landmark entries left out."""
    return io.BufferedReader(_IteratorStream(_filtered(tar)), _COPY_SIZE)


def _filtered(tar: BinaryIO) -> Iterator[bytes]:
    extended = False  # the entry now read has extended (PAX or GNU long name) headers before it
    while len(header := _read_exact(tar, _BLOCK)) == _BLOCK and header.strip(b"\0"):
        size = parse_number(header[124:136], "size")
        padded = -(-size // _BLOCK) * _BLOCK
        typeflag = header[156]
        drop = (
            not extended
            and typeflag in b"0\0"
            and cstring(header[345:500]) == b""
            and (cstring(header[0:100]).removeprefix(b"./") in _METADATA_NAMES)
        )
        extended = typeflag in _EXTENDED_TYPES
        if drop:
            _skip(tar, padded)
            continue
        yield header
        while padded:
            piece = tar.read(min(padded, _COPY_SIZE))
            if not piece:
                return  # truncated: the reader of this stream names the damage
            padded -= len(piece)
            yield piece
    yield header  # the end-of-archive block and what follows it, or the last bytes before the end
    if len(header) < _BLOCK:
        return  # the stream has ended: read no further (a source may close itself at its end)
    while rest := tar.read(_COPY_SIZE):
        yield rest


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    while data and len(data) < size and (more := stream.read(size - len(data))):
        data += more
    return data


def _skip(stream: BinaryIO, size: int) -> None:
    while size and (piece := stream.read(min(size, _COPY_SIZE))):
        size -= len(piece)


class _IteratorStream(io.RawIOBase):
    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._current = memoryview(piece)
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current))
        view[:count] = self._current[:count]
        self._current = self._current[count:]
        return count
