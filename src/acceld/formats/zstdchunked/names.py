"""Duplicate detection over a million names with 8 bytes of memory per name.

The names go to a spool file and only a 64-bit hash of each stays in memory; at the end the
hashes are sorted, and pairs of equal hashes are confirmed against the spooled names.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from acceld.formats.zstdchunked.spool import create_spool

_HASH_MASK = (1 << 64) - 1


class NameLog:
    """Names in the order they are added; `first_duplicate` finds the first name seen twice,
    where two names are the same when their `key`s are."""

    def __init__(self, path: Path, key: Callable[[str], str]) -> None:
        self.path = path
        self._key = key
        self._file = create_spool(path)
        self._hashes = array("Q")

    def close(self) -> None:
        self._file.close()

    def add(self, name: str) -> None:
        self._hashes.append(hash(self._key(name)) & _HASH_MASK)
        raw = name.encode("utf-8", "surrogateescape")
        self._file.write(len(raw).to_bytes(4, "little") + raw)

    def first_duplicate(self) -> str | None:
        """The earliest name whose key an earlier name already had (as it was added), or None."""
        self._file.flush()
        hashes = np.frombuffer(self._hashes, np.uint64) if self._hashes else np.empty(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        earlier, later = order[same], order[same + 1]  # a stable sort keeps equal hashes in name order
        for pair in np.argsort(later, kind="stable"):
            first, second = self._names(int(earlier[pair]), int(later[pair]))
            if self._key(first) == self._key(second):
                return second
        return None

    def _names(self, first: int, second: int) -> tuple[str, str]:
        found: dict[int, str] = {}
        for index, name in enumerate(self._spooled()):
            if index in (first, second):
                found[index] = name
                if index == second:
                    break
        return found[first], found[second]

    def _spooled(self) -> Iterator[str]:
        with self.path.open("rb") as spool:
            while header := spool.read(4):
                raw = spool.read(int.from_bytes(header, "little"))
                yield raw.decode("utf-8", "surrogateescape")
