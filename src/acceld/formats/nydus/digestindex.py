"""Chunk digests numbered in the order they were added: the digests themselves wait in a temp
file, memory holds each one's first 8 bytes plus an open-addressing table of numbers.

A dict keyed by digest objects costs ~110 bytes a chunk (a layer of a million small files has a
million chunks), the digests in one bytes array 32 and their table 8-16; this costs the 8-byte
prefix plus the table. A prefix that matches is confirmed by reading the whole digest back. Slots
come from the interpreter's salted `hash` of the whole digest, so crafted digests cannot pile up
in one run of slots.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

_EMPTY = -1
WIDTH = 32  # bytes of a digest
_TAIL_BYTES = 64 << 10  # digests not yet in the file are written in pieces of this size
_READ_BYTES = 256 << 10


class DigestIndex:
    def __init__(self, workdir: Path | None = None) -> None:
        # in `workdir` (default: the system's temp directory); 0600, already unlinked
        self._spool = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - closed by `close`
        self._fd = self._spool.fileno()
        self._spooled = 0  # digests in the file; the rest are in `_tail`
        self._tail = bytearray()
        self.prefixes = array("Q")  # the first 8 bytes of digest n, big-endian
        self._slots = array("i", [_EMPTY]) * 16
        self._count = 0

    def __len__(self) -> int:
        return len(self.prefixes)

    def __enter__(self) -> DigestIndex:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def find(self, digest: bytes) -> int:
        """The number of `digest`, or -1 when it was never added (or the index was released)."""
        return self._probe(digest)[0]

    def _probe(self, digest: bytes) -> tuple[int, int, int]:
        """(the number of `digest` or -1, the slot it is in or would go to, its prefix)."""
        slots, prefixes = self._slots, self.prefixes
        mask = len(slots) - 1
        slot = hash(digest) & mask
        prefix = int.from_bytes(digest[:8], "big")
        while (number := slots[slot]) != _EMPTY:
            if prefixes[number] == prefix and self.digest(number) == digest:
                return number, slot, prefix
            slot = (slot + 1) & mask
        return _EMPTY, slot, prefix

    def add(self, digest: bytes) -> int:
        """Number `digest`, which is not in the index yet, as the next one."""
        number = self.find_or_add(digest)
        if number >= 0:
            raise AssertionError("a digest added to the index twice")
        return ~number

    def find_or_add(self, digest: bytes) -> int:
        """`find(digest)` if it is in the index, else ~n (negative): it was numbered n, the next."""
        if len(digest) != WIDTH:
            raise ValueError(f"digest of {len(digest)} bytes in an index of {WIDTH}-byte digests")
        if 2 * (self._count + 1) > len(self._slots):
            self._grow()
        number, slot, prefix = self._probe(digest)
        if number != _EMPTY:
            return number
        number = len(self.prefixes)
        self.prefixes.append(prefix)
        self._tail += digest
        if len(self._tail) >= _TAIL_BYTES:
            self._spool_tail()
        self._slots[slot] = number
        self._count += 1
        return ~number

    def digest(self, number: int) -> bytes:
        """The digest numbered `number`."""
        if number >= self._spooled:
            start = WIDTH * (number - self._spooled)
            return bytes(self._tail[start : start + WIDTH])
        return os.pread(self._fd, WIDTH, WIDTH * number)

    def head(self, number: int) -> int:
        """The first two bytes of digest `number`, big-endian."""
        return self.prefixes[number] >> 48

    def pieces(self) -> Iterator[bytes]:
        """Every digest in number order, concatenated, in pieces of about a megabyte."""
        self._spool_tail()
        position, end = 0, WIDTH * self._spooled
        while position < end:
            piece = os.pread(self._fd, min(_READ_BYTES, end - position), position)
            if not piece:
                raise OSError("the digest spool file is shorter than what was written to it")
            position += len(piece)
            yield piece

    def _spool_tail(self) -> None:
        view, position = memoryview(self._tail), WIDTH * self._spooled
        while view:
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written
        self._spooled = len(self.prefixes)
        self._tail = bytearray()

    def _place(self, digest: bytes, number: int) -> None:
        mask = len(self._slots) - 1
        slot = hash(digest) & mask
        while self._slots[slot] != _EMPTY:
            slot = (slot + 1) & mask
        self._slots[slot] = number

    def _grow(self) -> None:
        self._slots = array("i", [_EMPTY]) * (2 * len(self._slots))
        number = 0
        for piece in self.pieces():
            for start in range(0, len(piece), WIDTH):
                self._place(piece[start : start + WIDTH], number)
                number += 1

    def release(self) -> None:
        """Drop the lookup table (`find` finds nothing after); the digests stay."""
        self._slots = array("i", [_EMPTY]) * 16
        self._count = 0
