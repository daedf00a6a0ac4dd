"""Chunk digests numbered in the order they were added, kept as one bytes array plus an
open-addressing table of numbers.

A dict keyed by digest objects costs ~110 bytes a chunk (a layer of a million small files has a
million chunks); this costs the digest itself plus 8-16 bytes. Slots come from the interpreter's
salted `hash`, so crafted digests cannot pile up in one run of slots.
"""

from __future__ import annotations

from array import array

_EMPTY = -1


class DigestIndex:
    def __init__(self, width: int = 32) -> None:
        self.width = width
        self.digests = bytearray()  # digest of number n at [n * width, (n + 1) * width)
        self._slots = array("i", [_EMPTY]) * 16
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def find(self, digest: bytes) -> int:
        """The number of `digest`, or -1 when it was never added."""
        mask = len(self._slots) - 1
        slot = hash(digest) & mask
        width = self.width
        while (number := self._slots[slot]) != _EMPTY:
            if self.digests[number * width : (number + 1) * width] == digest:
                return number
            slot = (slot + 1) & mask
        return _EMPTY

    def add(self, digest: bytes) -> int:
        """Number `digest`, which is not in the index yet, as the next one."""
        if len(digest) != self.width:
            raise ValueError(f"digest of {len(digest)} bytes in an index of {self.width}-byte digests")
        if 2 * (self._count + 1) > len(self._slots):
            self._grow()
        number = self._count
        self.digests += digest
        self._place(digest, number)
        self._count += 1
        return number

    def _place(self, digest: bytes, number: int) -> None:
        mask = len(self._slots) - 1
        slot = hash(digest) & mask
        while self._slots[slot] != _EMPTY:
            slot = (slot + 1) & mask
        self._slots[slot] = number

    def _grow(self) -> None:
        self._slots = array("i", [_EMPTY]) * (2 * len(self._slots))
        width = self.width
        for number in range(self._count):
            self._place(bytes(self.digests[number * width : (number + 1) * width]), number)

    def release(self) -> None:
        """Drop the lookup table; `digests` stays."""
        self._slots = array("i", [_EMPTY]) * 16
        self._count = 0
