"""Ordered output of independent zstd frames, compressed by a bounded thread pool.

The writer describes the stream as a sequence of frames and marks. Small frames are collected
into batches that worker threads compress, each batch's frames of one level in one call that
releases the GIL once (a batch holds up to a thousand frames of a few KiB: a GIL round trip per
frame would leave the compressing threads waiting on the thread that reads the tar); results
are written strictly in order, and each mark learns the compressed offset at which it falls.
A frame that grows past `STREAM_THRESHOLD` (a huge chunk or run of zeros) is compressed
incrementally on the calling thread instead, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import accumulate
from typing import BinaryIO

import zstandard

BATCH_BYTES = 2 << 20
BATCH_ITEMS = 1024  # frames and marks per batch: a batch of tiny frames holds one mark each
STREAM_THRESHOLD = 8 << 20
_ZEROS = bytes(1 << 20)
SMALL_FRAME = 16 << 10  # zstd's own parameter tables change at 16 KiB ...
MEDIUM_FRAME = 64 << 10  # ... (and 128 KiB, 256 KiB)

Piece = bytes | bytearray | memoryview


@dataclass(slots=True)
class Mark:
    """A position in the compressed stream, known once everything before it is written.

    `digest` is set for marks that start a frame whose content digest was asked for.
    """

    offset: int = -1
    digest: str = ""


@dataclass(frozen=True)
class FrameLevels:
    """The zstd level of a frame by its uncompressed size: `small` up to SMALL_FRAME bytes,
    `medium` up to MEDIUM_FRAME, `large` above."""

    large: int
    medium: int
    small: int

    @classmethod
    def graded(cls) -> FrameLevels:
        """The default: an output no larger than containers/storage's own (level 10 of its Go
        encoder, its "best") on real root filesystems. Level 7 for large frames is what that
        takes; on small frames levels above 5-6 gain under 0.3 % of their size for 40-90 % more
        time (a debootstrap image: 0.5 s less CPU for 0.17 % more output than level 7 throughout)."""
        return cls(large=7, medium=6, small=5)

    @classmethod
    def uniform(cls, level: int) -> FrameLevels:
        return cls(level, level, level)

    def of(self, size: int) -> int:
        if size <= SMALL_FRAME:
            return self.small
        return self.medium if size <= MEDIUM_FRAME else self.large


@dataclass(slots=True)
class _Frame:
    pieces: list[Piece] = field(default_factory=list)
    size: int = 0
    digest_into: Mark | None = None


_Item = Mark | _Frame


@dataclass(frozen=True, slots=True)
class _Output:
    """Compressed bytes ready to be written, and the marks among them with their offsets in `data`."""

    data: bytes
    marks: list[tuple[Mark, int]] = field(default_factory=list)


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _compress_batch(levels: FrameLevels, items: Sequence[_Item]) -> _Output:
    """The batch's frames compressed and joined, with the offsets of its marks (worked out here,
    not on the thread that reads the tar and writes the output)."""
    contents: list[Piece] = []
    marks: list[tuple[Mark, int]] = []  # mark, index of the frame after it
    by_level: dict[int, list[int]] = {}  # level -> indexes into `contents`
    for item in items:
        if isinstance(item, Mark):
            marks.append((item, len(contents)))
            continue
        data = item.pieces[0] if len(item.pieces) == 1 else b"".join(item.pieces)
        if item.digest_into is not None:
            item.digest_into.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        by_level.setdefault(levels.of(item.size), []).append(len(contents))
        contents.append(data)
    frames = [b""] * len(contents)
    for level, indexes in by_level.items():
        compressed = _compressor(level).multi_compress_to_buffer(  # the GIL released once
            [contents[index] for index in indexes], threads=1
        )
        for position, index in enumerate(indexes):
            frames[index] = compressed[position].tobytes()
    starts = list(accumulate(map(len, frames), initial=0))
    return _Output(b"".join(frames), [(mark, starts[index]) for mark, index in marks])


class FrameSink:
    """Writes frames to `out` in order; `position` is the number of bytes written so far."""

    def __init__(self, out: BinaryIO, pool: Executor, levels: FrameLevels, max_pending: int) -> None:
        self._out = out
        self._pool = pool
        self._levels = levels
        self._max_pending = max_pending
        self._queue: deque[Future[_Output] | _Output] = deque()
        self._batch: list[_Item] = []
        self._batch_size = 0
        self._open = _Frame()
        self._stream: zstandard.ZstdCompressionObj | None = None
        self._stream_hash = hashlib.sha256()
        self.position = 0

    def mark(self) -> Mark:
        """A mark at the current point, which must be between frames."""
        mark = Mark()
        self._batch.append(mark)
        return mark

    def write(self, data: Piece) -> None:
        """Append bytes to the open frame."""
        if not data:
            return
        if self._stream is not None:
            self._stream_hash.update(data)
            self._enqueue(_Output(self._stream.compress(data)))
            return
        self._open.pieces.append(data)
        self._open.size += len(data)
        if self._open.size > STREAM_THRESHOLD:
            self._start_streaming()

    def frame(self, data: Piece) -> tuple[Mark, Mark]:
        """Close the open frame, write `data` (1 to STREAM_THRESHOLD bytes) as one frame of its
        own with its digest recorded, and return the marks before and after it."""
        self.end_frame()
        start = Mark()
        end = Mark()
        frame = _Frame([data], len(data), start)
        self._batch += (start, frame, end)
        self._batch_size += frame.size
        if self._batch_size >= BATCH_BYTES or len(self._batch) >= BATCH_ITEMS:
            self._submit()
        return start, end

    def write_zeros(self, size: int) -> None:
        view = memoryview(_ZEROS)
        while size:
            step = min(size, len(_ZEROS))
            self.write(view[:step])
            size -= step

    def end_frame(self, digest_into: Mark | None = None) -> None:
        """Close the open frame (no-op when it is empty); optionally record its content digest."""
        if self._stream is not None:
            if digest_into is not None:
                digest_into.digest = "sha256:" + self._stream_hash.hexdigest()
            self._enqueue(_Output(self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)))
            self._stream = None
            return
        if not self._open.size:
            return
        self._open.digest_into = digest_into
        self._batch.append(self._open)
        self._batch_size += self._open.size
        self._open = _Frame()
        if self._batch_size >= BATCH_BYTES or len(self._batch) >= BATCH_ITEMS:
            self._submit()

    def flush(self) -> None:
        """Write everything queued so far (the open frame must be closed)."""
        self._submit()
        while self._queue:
            self._write_front()

    def _start_streaming(self) -> None:
        self._submit()
        self._stream = zstandard.ZstdCompressor(level=self._levels.large).compressobj()
        self._stream_hash = hashlib.sha256()
        pieces, self._open = self._open.pieces, _Frame()
        for piece in pieces:
            self.write(piece)

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_size = self._batch, [], 0
        if all(isinstance(item, Mark) for item in batch):
            self._enqueue(_Output(b"", [(item, 0) for item in batch if isinstance(item, Mark)]))
        else:
            self._enqueue(self._pool.submit(_compress_batch, self._levels, batch))

    def _enqueue(self, output: Future[_Output] | _Output) -> None:
        if isinstance(output, _Output) and self._batch:
            self._submit()  # keep marks queued before this output in front of it
        self._queue.append(output)
        while len(self._queue) > self._max_pending:
            self._write_front()

    def _write_front(self) -> None:
        front = self._queue.popleft()
        output = front.result() if isinstance(front, Future) else front
        position = self.position
        for mark, offset in output.marks:
            mark.offset = position + offset
        if output.data:
            self._out.write(output.data)  # one write per batch: a batch holds up to BATCH_ITEMS frames
        self.position = position + len(output.data)
