"""The byte ranges a RAFS v6 bootstrap's structures claim, checked for overlaps in compact arrays.

A bootstrap of a million files claims a range per inode; each claim costs 12 bytes here (start,
end, label as 32-bit numbers: a bootstrap is at most 1 GiB) instead of a tuple with a message.
The message of an overlap is rebuilt from the labels, naming inodes through `describe_inode`.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Final

import numpy as np

from acceld.formats.nydus.reader_common import BootstrapError

SUPERBLOCKS_CLAIM: Final = 0
DEVICE_TABLE_CLAIM: Final = 1
SUPERBLOCK_REST_CLAIM: Final = 2
BLOB_TABLE_CLAIM: Final = 3
CHUNK_TABLE_CLAIM: Final = 4
PREFETCH_TABLE_CLAIM: Final = 5
INODE_CLAIM: Final = 6
INODE_BLOCKS_CLAIM: Final = 7
_NAMES: Final = {
    SUPERBLOCKS_CLAIM: "superblocks",
    DEVICE_TABLE_CLAIM: "device table",
    SUPERBLOCK_REST_CLAIM: "the rest of the superblock block",
    BLOB_TABLE_CLAIM: "blob table",
    CHUNK_TABLE_CLAIM: "chunk table",
    PREFETCH_TABLE_CLAIM: "prefetch table",
}


class Claims:
    """[start, end) ranges with a label (what << 0 | nid << 3); `check` refuses any two that overlap."""

    def __init__(self) -> None:
        self.starts = array("I")
        self.ends = array("I")
        self.labels = array("I")

    def add(self, start: int, end: int, what: int, nid: int = 0) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.labels.append(nid << 3 | what)

    def check(self, describe_inode: Callable[[int], str]) -> None:
        """Sort by start (then claim order) and compare neighbours, as a sorted list of ranges would."""
        count = len(self.starts)
        if count < 2:
            return
        keys = np.frombuffer(self.starts, dtype=np.uint32).astype(np.uint64) << np.uint64(32)
        keys |= np.arange(count, dtype=np.uint64)
        keys.sort()
        order = (keys & np.uint64(0xFFFF_FFFF)).astype(np.int64)
        del keys
        starts = np.frombuffer(self.starts, dtype=np.uint32)[order]
        ends = np.frombuffer(self.ends, dtype=np.uint32)[order]
        overlaps = np.nonzero(starts[1:] < ends[:-1])[0]
        del starts, ends
        if not len(overlaps):
            return
        first, second = (int(order[overlaps[0] + k]) for k in (0, 1))
        raise BootstrapError(
            f"{self._what(first, describe_inode)} [{self.starts[first]:#x}, {self.ends[first]:#x}) overlaps "
            f"{self._what(second, describe_inode)} [{self.starts[second]:#x}, {self.ends[second]:#x})"
        )

    def _what(self, index: int, describe_inode: Callable[[int], str]) -> str:
        label = self.labels[index]
        what, nid = label & 7, label >> 3
        if what == INODE_CLAIM:
            return describe_inode(nid)
        if what == INODE_BLOCKS_CLAIM:
            return f"{describe_inode(nid)} data blocks"
        return _NAMES[what]
