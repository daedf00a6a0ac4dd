"""The uncompressed stream of the blob as pieces of the spool, and where gzip members start.

`stream_events` lists the blob's uncompressed content (before the TOC) in order: raw header and
payload ranges of the spool, the landmark's literal bytes, and a `ChunkStart` marker before every
chunk. `plain_members` cuts it like the reference writer does without minChunkSize: a new member
at every chunk, headers and padding staying in the member before.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from acceld.formats.estargz.gzip_members import ustar_file_header
from acceld.formats.estargz.order import Items, Landmark
from acceld.formats.estargz.toc import LANDMARK_CONTENT
from acceld.formats.tarreader import BLOCK, TYPE_REG

LANDMARK_PAYLOAD = LANDMARK_CONTENT + bytes(BLOCK - len(LANDMARK_CONTENT))


# A piece of a member's uncompressed content: a (offset, length) range of the spool, or literal bytes.
Segment = tuple[int, int] | bytes


@dataclass(frozen=True, slots=True)
class ChunkStart:
    """Chunk `chunk` of item `item` starts here (its TOC entry needs the member's offset)."""

    item: int
    chunk: int


@dataclass(slots=True)
class Member:
    segments: list[Segment] = field(default_factory=list)
    starts: list[ChunkStart] = field(default_factory=list)
    size: int = 0

    def add(self, segment: Segment) -> None:
        last = self.segments[-1] if self.segments else None
        if isinstance(segment, tuple) and isinstance(last, tuple) and last[0] + last[1] == segment[0]:
            self.segments[-1] = (last[0], last[1] + segment[1])
        else:
            self.segments.append(segment)
        self.size += segment[1] if isinstance(segment, tuple) else len(segment)


def stream_events(items: Items, chunk_size: int) -> Iterator[Segment | ChunkStart]:
    """The uncompressed stream in order, with a marker before every chunk."""
    for index, item in enumerate(items):
        if isinstance(item, Landmark):
            yield ustar_file_header(item.name, len(LANDMARK_CONTENT))
            yield ChunkStart(index, 0)
            yield LANDMARK_PAYLOAD
            continue
        yield (item.header_offset, item.data_offset - item.header_offset)
        if item.typeflag != TYPE_REG or item.size == 0:
            continue
        for number, start in enumerate(range(0, item.size, chunk_size)):
            yield ChunkStart(index, number)
            yield (item.data_offset + start, min(chunk_size, item.size - start))
        padding = -item.size % BLOCK
        if padding:
            yield (item.data_offset + item.size, padding)


class Placements:
    """Where each chunk landed: (member offset, innerOffset), recorded in stream order."""

    def __init__(self) -> None:
        self._offsets = array("Q")
        self._inner_offsets = array("Q")

    def add(self, offset: int, inner_offset: int) -> None:
        self._offsets.append(offset)
        self._inner_offsets.append(inner_offset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._offsets, self._inner_offsets, strict=True)


def plain_members(events: Iterator[Segment | ChunkStart]) -> Iterator[Member]:
    """Members of the plain layout: every chunk starts a new member."""
    current = Member()
    for event in events:
        if isinstance(event, ChunkStart):
            if current.size:
                yield current
                current = Member()
            current.starts.append(event)
        else:
            current.add(event)
    if current.size:
        yield current
