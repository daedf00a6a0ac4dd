"""Writes a decompressed layer tar as a containers/storage zstd:chunked blob.

Layout: the tar in zstd frames (a new frame before each file's payload and at every chunk
boundary, padding and following headers in the frame after a payload), then the compressed
TOC, the compressed tar-split and the 64-byte footer, each in a zstd skippable frame.
Decompressing the blob yields the source tar byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import fastcrc
import numpy as np

from acceld.formats.driver import FormatError
from acceld.formats.targuard import TarGuard
from acceld.formats.zstdchunked.annotations import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    TARSPLIT_POSITION_KEY,
)
from acceld.formats.zstdchunked.chunker import (
    WINDOW,
    Chunker,
    Piece,
    Zeros,
    is_one_chunk,
    split_points,
    split_points_each,
)
from acceld.formats.zstdchunked.frames import FrameLevels, FrameSink, Mark
from acceld.formats.zstdchunked.tarheaders import Readable, TarHeader, TarHeaderReader
from acceld.formats.zstdchunked.tarsplit import TarSplitWriter
from acceld.formats.zstdchunked.toc import CHUNK_TYPE_ZEROS, TocEntry, TocWriter

MANIFEST_TYPE_CRFS = 1
FOOTER_MAGIC = b"GNUlInUx"
SKIPPABLE_MAGIC = struct.pack("<I", 0x184D2A50)
_SKIPPABLE_HEADER = 8
_READ_BLOCK = 4 << 20
_TRAILER_SEGMENT = 1 << 20  # tar-split stores data after the end-of-archive marker in 1 MiB segments
_EMPTY_CRC = 0  # CRC-64 of no bytes
_OFFLOAD_SPLITS = 256 << 10  # smaller blocks are not worth a trip through the pool
_HASH_BACKLOG = 8
_GROUP_BYTES = 1 << 20  # small files per split-point task ...
_GROUP_FILES = 1024  # ... (tiny files: by count)
_GROUPS_AHEAD = 2  # groups whose split points are computed while an earlier group is written
_GATHER_READS = 1 << 20


@dataclass(frozen=True)
class ChunkedLayer:
    """What the writer reports: the source tar's digest and the layer annotations."""

    diff_id: str
    annotations: dict[str, str]
    metadata_sizes: dict[str, int]  # uncompressed bytes of the TOC and the tar-split


@dataclass(slots=True)
class _Chunk:
    start: Mark
    offset_in_file: int
    size: int = 0
    zeros: bool = False


@dataclass(slots=True)
class _PendingFile:
    """A file whose TOC offsets are known only after its frames are written, and whose digest
    only after its last hash update (`hashed`) ran — or, without `digest`, from its only chunk's
    frame (the same bytes; without `chunks`, the file is that one frame at `start`)."""

    entry: TocEntry
    start: Mark
    end: Mark
    digest: Any = None
    hashed: Future[None] | None = None
    chunks: list[_Chunk] = field(default_factory=list)

    def ready(self) -> bool:
        return self.end.offset >= 0

    def resolve(self) -> list[TocEntry]:
        """The file's TOC entry, followed by one per further chunk when it has several."""
        if self.hashed is not None:
            self.hashed.result()
        if self.digest is not None:
            self.entry.digest = "sha256:" + self.digest.hexdigest()
        else:
            self.entry.digest = (self.chunks[0].start if self.chunks else self.start).digest
        self.entry.offset = self.start.offset
        self.entry.end_offset = self.end.offset
        if len(self.chunks) < 2:
            return [self.entry]
        entries = [self.entry] + [TocEntry(type="chunk", name=self.entry.name) for _ in self.chunks[1:]]
        for target, chunk in zip(entries, self.chunks, strict=True):
            target.offset = chunk.start.offset
            target.chunk_offset = chunk.offset_in_file
            target.chunk_size = chunk.size
            target.chunk_digest = chunk.start.digest
            target.chunk_type = CHUNK_TYPE_ZEROS if chunk.zeros else ""
        return entries


class _BackgroundHashing:
    """Updates sha256 objects in submission order on a single thread, off the main thread.

    hashlib releases the GIL on large updates; at most `_HASH_BACKLOG` updates wait.
    """

    def __init__(self, single_thread: Executor) -> None:
        self._executor = single_thread  # one worker: updates of one hash must stay in order
        self._pending: deque[Future[None]] = deque()

    def update(self, digest: Any, data: bytes) -> Future[None]:
        """Queue `digest.update(data)`; the future is done when it ran."""
        update = self._executor.submit(digest.update, data)
        self._pending.append(update)
        while len(self._pending) > _HASH_BACKLOG:
            self._pending.popleft().result()
        return update

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()


class _HashingReader:
    """Computes the sha256 of everything read through it (the layer's diff_id) in the background.

    Small reads (tar headers) are gathered into larger updates first.
    """

    def __init__(self, stream: BinaryIO, hashing: _BackgroundHashing) -> None:
        self._stream = stream
        self._hashing = hashing
        self._digest = hashlib.sha256()
        self._small = bytearray()

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) >= _GATHER_READS:
            self._flush()
            self._hashing.update(self._digest, data)
        else:
            self._small += data
            if len(self._small) >= _GATHER_READS:
                self._flush()
        return data

    def _flush(self) -> None:
        if self._small:
            self._hashing.update(self._digest, bytes(self._small))
            self._small.clear()

    def hexdigest(self) -> str:
        self._flush()
        self._hashing.wait()
        return self._digest.hexdigest()


@dataclass
class _SplitGroup:
    """Small files (raw bytes before each, header, content) whose split points one pool task
    computes together."""

    files: list[tuple[bytes, TarHeader, bytes]] = field(default_factory=list)
    size: int = 0  # of the contents
    future: Future[list[np.ndarray]] | None = None


def _skippable_frame(size: int) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", size)


class _LayerWriter:
    def __init__(
        self,
        tar: BinaryIO,
        sink: FrameSink,
        tar_split: TarSplitWriter,
        toc: TocWriter,
        rollsum_pool: Executor,
        hash_thread: Executor,
        lookahead: int,
        tar_sha256: str | None,
        guard: TarGuard | None,
    ) -> None:
        self._pool = rollsum_pool
        self._lookahead = lookahead
        self._hashing = _BackgroundHashing(hash_thread)
        self._tar_sha256 = tar_sha256
        self._hashed_source = None if tar_sha256 else _HashingReader(tar, self._hashing)
        self._source: Readable = self._hashed_source or tar
        self._reader = TarHeaderReader(self._source, guard)
        self._sink = sink
        self._tar_split = tar_split
        self._toc = toc
        self._unresolved: deque[_PendingFile | TocEntry] = deque()
        self._groups: deque[_SplitGroup] = deque()  # submitted, not yet written
        self._group = _SplitGroup()

    def run(self) -> None:
        raw = bytearray()
        while (header := self._reader.next(raw)) is not None:
            entry_raw, raw = bytes(raw), bytearray()
            payload = header.payload_size
            if 0 < payload <= _READ_BLOCK:
                self._defer(entry_raw, header, self._reader.read_payload(payload))
                continue
            self._drain()
            self._entry(entry_raw, header, self._blocks(payload) if payload else None)
        self._drain()
        self._raw(raw)
        while rest := self._source.read(_TRAILER_SEGMENT):
            if rest.strip(b"\0"):
                # containers/storage parses every tar-split segment as a header: it would refuse the layer
                raise FormatError("layer tar has data other than zeros after its end-of-archive marker")
            self._raw(rest)
        self._sink.end_frame()
        self._sink.flush()
        self._diff_id = self._tar_sha256 or "sha256:" + cast(_HashingReader, self._hashed_source).hexdigest()
        self._write_resolved()

    def _entry(
        self,
        raw: bytes,
        header: TarHeader,
        blocks: Iterable[tuple[bytes, np.ndarray]] | None,
        whole: tuple[bytes, np.ndarray] | None = None,
    ) -> None:
        """The content comes as `blocks` (with their split points) or `whole` (one block in hand)."""
        self._raw(raw)
        entry = TocEntry.from_header(header)
        crc: int | None
        if whole is not None:
            crc = self._whole_payload(entry, *whole)
        elif blocks is not None:
            crc = self._payload(entry, blocks, None)
        else:
            self._unresolved.append(entry)
            crc = _EMPTY_CRC if header.size > 0 else None  # tar-split sums only non-zero sizes
        self._tar_split.file(header.name, header.size, crc)
        self._write_resolved()

    def _defer(self, raw: bytes, header: TarHeader, content: bytes) -> None:
        """Queue a file that fits one block; its split points are computed with others' in the pool.

        A group is written as soon as `_GROUPS_AHEAD` later ones are submitted, so the frames of
        small files reach the compressing threads while the next files are read."""
        group = self._group
        group.files.append((raw, header, content))
        group.size += len(content)
        if group.size >= _GROUP_BYTES or len(group.files) >= _GROUP_FILES:
            self._submit_group()
            if len(self._groups) > _GROUPS_AHEAD:
                self._write_group(self._groups.popleft())

    def _submit_group(self) -> None:
        if self._group.files:
            contents = [content for _, _, content in self._group.files]
            self._group.future = self._pool.submit(split_points_each, contents)
            self._groups.append(self._group)
            self._group = _SplitGroup()

    def _drain(self) -> None:
        """Write the queued files, in order."""
        self._submit_group()
        while self._groups:
            self._write_group(self._groups.popleft())

    def _write_group(self, group: _SplitGroup) -> None:
        assert group.future is not None
        for (raw, header, content), splits in zip(group.files, group.future.result(), strict=True):
            self._entry(raw, header, None, whole=(content, splits))

    def _write_resolved(self) -> None:
        """Write the TOC entries, in order, whose files' frames are written."""
        while self._unresolved:
            item = self._unresolved[0]
            if isinstance(item, TocEntry):
                self._toc.add(item)
            elif item.ready():
                for entry in item.resolve():
                    self._toc.add(entry)
            else:
                return
            self._unresolved.popleft()

    def diff_id(self) -> str:
        return self._diff_id

    def _raw(self, raw: bytes | bytearray) -> None:
        if raw:
            self._sink.write(bytes(raw))
            self._tar_split.segment(raw)

    def _whole_payload(self, entry: TocEntry, content: bytes, splits: np.ndarray) -> int:
        """Write the frames of a file whose content is in hand; most are one chunk, one frame."""
        if not is_one_chunk(content, splits):
            return self._payload(entry, [(content, splits)], content)
        start, end = self._sink.frame(content)
        self._unresolved.append(_PendingFile(entry=entry, start=start, end=end))
        return int(fastcrc.crc64.go_iso(content))

    def _payload(
        self, entry: TocEntry, blocks: Iterable[tuple[bytes, np.ndarray]], whole: bytes | None
    ) -> int:
        """Write a file's frames. A file of one chunk takes its digest from that chunk's frame;
        a `whole` file (content in hand) is hashed only when it turns out to have several."""
        self._sink.end_frame()
        pending = _PendingFile(entry=entry, start=self._sink.mark(), end=Mark())
        self._unresolved.append(pending)
        if whole is None:
            pending.digest = hashlib.sha256()
        frames = _ChunkFrames(self._sink, pending)
        chunker = Chunker()
        crc: int | None = None
        for block, splits in blocks:
            if pending.digest is not None:
                pending.hashed = self._hashing.update(pending.digest, block)
            crc = fastcrc.crc64.go_iso(block, crc)
            for piece in chunker.feed(block, splits):
                frames.add(piece)
        for piece in chunker.finish():
            frames.add(piece)
        if whole is not None and len(pending.chunks) > 1:
            pending.digest = hashlib.sha256()
            pending.hashed = self._hashing.update(pending.digest, whole)
        pending.end = self._sink.mark()
        return crc if crc is not None else _EMPTY_CRC

    def _blocks(self, size: int) -> Iterator[tuple[bytes, np.ndarray]]:
        """The file content in blocks with their rolling-checksum split points.

        Split points of large blocks are computed a few blocks ahead by their own thread pool
        (numpy releases the GIL; they must not queue behind compression batches), so the main
        thread only hashes and routes bytes.
        """
        history = bytes(WINDOW)
        queue: deque[tuple[bytes, Future[np.ndarray] | np.ndarray]] = deque()
        remaining = size
        while remaining or queue:
            while remaining and len(queue) < self._lookahead:
                block = self._reader.read_payload(min(_READ_BLOCK, remaining))
                remaining -= len(block)
                if len(block) >= _OFFLOAD_SPLITS:
                    queue.append((block, self._pool.submit(split_points, history, block)))
                else:
                    queue.append((block, split_points(history, block)))
                history = (history + block[-WINDOW:])[-WINDOW:]
            block, splits = queue.popleft()
            yield block, splits.result() if isinstance(splits, Future) else splits


class _ChunkFrames:
    """Routes one file's pieces into frames: one frame per chunk, zeros chunks included."""

    def __init__(self, sink: FrameSink, pending: _PendingFile) -> None:
        self._sink = sink
        self._pending = pending
        self._current: _Chunk | None = None
        self._written = 0

    def add(self, piece: Piece) -> None:
        if isinstance(piece, Zeros):
            self._close()
            chunk = _Chunk(start=self._sink.mark(), offset_in_file=self._written, size=piece.size, zeros=True)
            self._sink.write_zeros(piece.size)
            self._sink.end_frame(digest_into=chunk.start)
            self._pending.chunks.append(chunk)
            self._written += piece.size
            return
        if piece.data:
            if self._current is None:
                self._current = _Chunk(start=self._sink.mark(), offset_in_file=self._written)
            self._sink.write(piece.data)
            self._current.size += len(piece.data)
            self._written += len(piece.data)
        if piece.cut:
            self._close()

    def _close(self) -> None:
        if self._current is not None:
            self._sink.end_frame(digest_into=self._current.start)
            self._pending.chunks.append(self._current)
            self._current = None


def write_zstd_chunked(
    tar: BinaryIO,
    out: BinaryIO,
    workdir: Path,
    *,
    levels: FrameLevels | None = None,
    workers: int = 2,
    tar_sha256: str | None = None,
    guard: TarGuard | None = None,
) -> ChunkedLayer:
    """Convert the tar stream `tar` into a zstd:chunked blob written sequentially to `out`.

    `levels`: the zstd levels of the frames (default `FrameLevels.graded()`); the TOC and the
    tar-split are compressed at its large-frame level.
    `tar_sha256`: the digest of `tar`'s bytes when the caller verifies it, reported as the diff_id
    instead of hashing the tar again.
    `guard`: the TarGuard watching `tar`, handed every header as it is read (`TarHeaderReader`).

    The TOC and tar-split are spooled to files in `workdir` as they are produced (and removed).
    """
    levels = levels or FrameLevels.graded()
    with (
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="zstdchunked") as pool,
        ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="zstdchunked-rollsum"
        ) as rollsum_pool,
        # one thread for the sha256 of multi-chunk files and the tar-split's compression
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="zstdchunked-sha256") as hash_thread,
        TarSplitWriter(workdir / "tar-split.json.zst", levels.large, hash_thread) as tar_split,
        TocWriter(workdir / "toc.json") as toc,
    ):
        sink = FrameSink(out, pool, levels, max_pending=max(1, workers) + 1)
        layer = _LayerWriter(
            tar, sink, tar_split, toc, rollsum_pool, hash_thread, max(1, workers) + 1, tar_sha256, guard
        )
        layer.run()
        toc.finish(tar_split.finish())
        manifest = toc.compress(levels.large)

        position = sink.position
        manifest_offset = position + _SKIPPABLE_HEADER
        out.write(_skippable_frame(manifest.size))
        _copy_into(manifest.path, out)
        tar_split_offset = manifest_offset + manifest.size + _SKIPPABLE_HEADER
        out.write(_skippable_frame(tar_split.compressed_size))
        _copy_into(tar_split.path, out)
        footer = struct.pack(
            "<7Q",
            manifest_offset,
            manifest.size,
            toc.size,
            MANIFEST_TYPE_CRFS,
            tar_split_offset,
            tar_split.compressed_size,
            tar_split.uncompressed_size,
        )
        out.write(_skippable_frame(len(footer) + len(FOOTER_MAGIC)) + footer + FOOTER_MAGIC)

    return ChunkedLayer(
        diff_id=layer.diff_id(),
        annotations={
            MANIFEST_CHECKSUM_KEY: manifest.digest,
            MANIFEST_POSITION_KEY: (f"{manifest_offset}:{manifest.size}:{toc.size}:{MANIFEST_TYPE_CRFS}"),
            TARSPLIT_POSITION_KEY: (
                f"{tar_split_offset}:{tar_split.compressed_size}:{tar_split.uncompressed_size}"
            ),
        },
        metadata_sizes={"TOC": toc.size, "tar-split": tar_split.uncompressed_size},
    )


def _copy_into(spooled: Path, out: BinaryIO) -> None:
    with spooled.open("rb") as source:
        shutil.copyfileobj(source, out, 1 << 20)
