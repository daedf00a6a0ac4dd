"""File content chunking with the containers/storage rules, fed block by block.

* A maximal run of at least 1024 zero bytes is a chunk of its own (a "zeros" chunk).
* Other bytes go through a bup-style rolling checksum (window 64, char offset 31): a chunk
  ends after a byte when the low 16 bits of `s2` are all ones. The checksum keeps rolling
  through zero runs and is never reset inside a file.

`s2` after a byte only depends on the last 64 bytes: with the window's bytes c_0 (newest)
to c_63 (oldest, zeros before the file start), s2 = 64*63*31 + sum((m + 1) * c_m), which
makes the search vectorisable (and independent of how the content is split into blocks).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

WINDOW = 64
_CHAR_OFFSET = 31
_SPLIT_MASK = 0xFFFF  # RollsumBits = 16
HOLE_THRESHOLD = 1024
_S2_INIT = WINDOW * (WINDOW - 1) * _CHAR_OFFSET
_HOLE_NEEDLE = bytes(HOLE_THRESHOLD)
_NON_ZERO = re.compile(rb"[^\x00]")
_SPLIT_TARGET = (_SPLIT_MASK - _S2_INIT) & _SPLIT_MASK  # s2 = _S2_INIT + weighted window sum
_SPLIT_BLOCK = 1 << 17  # elements per vectorised pass, small enough to stay in the CPU cache
_NO_POINTS = np.empty(0, np.int64)
_NO_POINTS.flags.writeable = False


@dataclass(frozen=True)
class Data:
    """Content bytes; `cut` is true when a chunk ends right after them."""

    data: bytes | memoryview
    cut: bool


@dataclass(frozen=True)
class Zeros:
    """A zeros chunk of `size` bytes (always a chunk of its own)."""

    size: int


Piece = Data | Zeros


def split_points(history: bytes, data: bytes | memoryview) -> np.ndarray:
    """Indices i such that a chunk ends after data[i], given the 64 bytes before `data`."""
    window = np.concatenate((np.frombuffer(history, np.uint8), np.frombuffer(data, np.uint8)))
    found = []
    for start in range(0, len(window) - WINDOW, _SPLIT_BLOCK):
        weighted = _weighted_windows(window[start : start + _SPLIT_BLOCK + WINDOW].astype(np.uint16))
        found.append(np.flatnonzero(weighted[1:] == _SPLIT_TARGET) + start)
    return np.concatenate(found) if found else np.empty(0, np.int64)


def split_points_each(contents: list[bytes]) -> list[np.ndarray]:
    """`split_points` of each whole file content, found in one pass over them all: joined with
    WINDOW zero bytes between them, each is preceded by the zero window a file starts with."""
    if not contents:
        return []
    points = split_points(bytes(WINDOW), bytes(WINDOW).join(contents))
    sizes = np.fromiter((len(content) for content in contents), np.int64, len(contents))
    starts = np.cumsum(sizes + WINDOW) - sizes - WINDOW
    first = np.searchsorted(points, starts).tolist()
    last = np.searchsorted(points, starts + sizes).tolist()
    # most small files have no split point: they share one empty array (a new one each holds the GIL)
    return [
        points[lo:hi] - start if lo < hi else _NO_POINTS
        for lo, hi, start in zip(first, last, starts.tolist(), strict=True)
    ]


def _weighted_windows(x: np.ndarray) -> np.ndarray:
    """sum((m + 1) * x[t - m] for m in 0..63) modulo 2**16 for every t >= 63 (result index t - 63).

    Doubling: with A_k / B_k the plain / weighted sums of the last k values,
    A_2k[t] = A_k[t] + A_k[t-k] and B_2k[t] = B_k[t] + B_k[t-k] + k * A_k[t-k]. Six steps of
    elementwise uint16 operations on cache-sized blocks beat two sequential cumulative sums.
    """
    plain = weighted = x
    k = 1
    while k < WINDOW:
        shifted = plain[:-k] * np.uint16(k) if k > 1 else plain[:-k]
        weighted = weighted[k:] + weighted[:-k]
        weighted += shifted
        if 2 * k < WINDOW:
            plain = plain[k:] + plain[:-k]
        k *= 2
    return weighted


def is_one_chunk(data: bytes, splits: np.ndarray) -> bool:
    """Whether a whole file's content (with its split points) is a single data chunk: no split
    point before its last byte and no zero run long enough to be a chunk of its own."""
    return (not len(splits) or int(splits[0]) >= len(data) - 1) and _HOLE_NEEDLE not in data


class Chunker:
    """Turns the content of one file, fed in blocks, into Data and Zeros pieces in order.

    Each block comes with its split points (`split_points` over the block, given the 64 bytes
    of the file before it), so callers can compute those elsewhere, e.g. in worker threads.
    """

    def __init__(self) -> None:
        self._pending_zeros = 0  # trailing zero run whose end is not known yet
        self._pending_splits: list[int] = []  # split points inside that run, relative to its start

    def feed(self, block: bytes, splits: np.ndarray) -> Iterator[Piece]:
        first = _NON_ZERO.search(block)
        if first is None:
            self._pending_splits += (splits + self._pending_zeros).tolist()
            self._pending_zeros += len(block)
            return
        start = first.start()
        end = len(block) - _trailing_zeros(block)
        cut = int(np.searchsorted(splits, end))
        lead = self._pending_zeros + start
        if lead >= HOLE_THRESHOLD:
            yield Zeros(lead)
            region = block[start:end]
            first_split = int(np.searchsorted(splits, start))
            region_splits = (splits[first_split:cut] - start).tolist()
        else:
            region = bytes(self._pending_zeros) + block[:end] if self._pending_zeros else block[:end]
            region_splits = self._pending_splits + (splits[:cut] + self._pending_zeros).tolist()
        self._pending_zeros = len(block) - end
        self._pending_splits = (splits[cut:] - end).tolist()
        yield from _region(region, region_splits, final=False)

    def finish(self) -> Iterator[Piece]:
        """Pieces for the rest of the file; the last piece always ends a chunk."""
        pending, self._pending_zeros = self._pending_zeros, 0
        if pending >= HOLE_THRESHOLD:
            yield Zeros(pending)
        elif pending:
            yield from _region(bytes(pending), self._pending_splits, final=True)
        else:
            yield Data(b"", cut=True)


def _region(region: bytes, splits: list[int], final: bool) -> Iterator[Piece]:
    """Chunk a region that ends with a non-zero byte (or is the end of the file)."""
    view = memoryview(region)
    pos = 0
    for hole_start, hole_end in _holes(region):
        yield from _data(view, pos, hole_start, splits, cut_at_end=True)
        yield Zeros(hole_end - hole_start)
        pos = hole_end
    yield from _data(view, pos, len(region), splits, cut_at_end=final)


def _data(view: memoryview, start: int, end: int, splits: list[int], cut_at_end: bool) -> Iterator[Piece]:
    """Data pieces of view[start:end], cut after every split point in that range."""
    pos = start
    for index in splits[bisect.bisect_left(splits, start) : bisect.bisect_left(splits, end)]:
        yield Data(view[pos : index + 1], cut=True)
        pos = index + 1
    if pos < end:
        yield Data(view[pos:end], cut=cut_at_end)


def _trailing_zeros(block: bytes) -> int:
    """The length of the zero run that ends `block`, found in growing tail windows: most blocks
    end in zeros (padding, tables) and a strip of the whole block would copy megabytes."""
    if block[-1]:
        return 0
    size = len(block)
    window = 4096
    while True:
        start = max(0, size - window)
        kept = len(block[start:].rstrip(b"\0"))
        if kept or not start:
            return size - start - kept
        window *= 16


def _holes(region: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of the zero runs of at least HOLE_THRESHOLD bytes in `region`."""
    pos = 0
    while (start := region.find(_HOLE_NEEDLE, pos)) >= 0:
        match = _NON_ZERO.search(region, start + HOLE_THRESHOLD)
        end = match.start() if match else len(region)
        yield start, end
        pos = end
