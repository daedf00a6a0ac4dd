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
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import fastcrc
import numpy as np
import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.zstdchunked.chunker import WINDOW, Chunker, Piece, Zeros, split_points
from acceld.formats.zstdchunked.frames import FrameSink, Mark
from acceld.formats.zstdchunked.tarheaders import TarHeader, TarHeaderReader
from acceld.formats.zstdchunked.tarsplit import TarSplitWriter
from acceld.formats.zstdchunked.toc import CHUNK_TYPE_ZEROS, TocEntry, toc_json

MANIFEST_CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
MANIFEST_POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_POSITION_KEY = "io.github.containers.zstd-chunked.tarsplit-position"
MANIFEST_TYPE_CRFS = 1
FOOTER_MAGIC = b"GNUlInUx"
SKIPPABLE_MAGIC = struct.pack("<I", 0x184D2A50)
_SKIPPABLE_HEADER = 8
_READ_BLOCK = 4 << 20
_TRAILER_SEGMENT = 1 << 20  # tar-split stores data after the end-of-archive marker in 1 MiB segments
_EMPTY_CRC = 0  # CRC-64 of no bytes
_OFFLOAD_SPLITS = 256 << 10  # smaller blocks are not worth a trip through the pool


@dataclass(frozen=True)
class ChunkedLayer:
    """What the writer reports: the source tar's digest and the layer annotations."""

    diff_id: str
    annotations: dict[str, str]


@dataclass
class _Chunk:
    start: Mark
    offset_in_file: int
    size: int = 0
    zeros: bool = False


@dataclass
class _PendingFile:
    """A file whose TOC offsets are known only after its frames are written."""

    entry: TocEntry
    start: Mark
    end: Mark
    chunks: list[_Chunk] = field(default_factory=list)

    def resolve(self) -> Iterator[TocEntry]:
        self.entry.offset = self.start.offset
        self.entry.end_offset = self.end.offset
        yield self.entry
        if len(self.chunks) < 2:
            return
        for index, chunk in enumerate(self.chunks):
            target = self.entry if index == 0 else TocEntry(type="chunk", name=self.entry.name)
            target.offset = chunk.start.offset
            target.chunk_offset = chunk.offset_in_file
            target.chunk_size = chunk.size
            target.chunk_digest = chunk.start.digest
            target.chunk_type = CHUNK_TYPE_ZEROS if chunk.zeros else ""
            if index:
                yield target


class _HashingReader:
    """Computes the sha256 of everything read through it (the layer's diff_id)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        return data


def _skippable_frame(size: int) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", size)


class _LayerWriter:
    def __init__(
        self,
        tar: BinaryIO,
        sink: FrameSink,
        tar_split: TarSplitWriter,
        rollsum_pool: Executor,
        lookahead: int,
    ) -> None:
        self._pool = rollsum_pool
        self._lookahead = lookahead
        self._source = _HashingReader(tar)
        self._reader = TarHeaderReader(self._source)
        self._sink = sink
        self._tar_split = tar_split
        self._files: list[_PendingFile | TocEntry] = []

    def run(self) -> None:
        raw = bytearray()
        while (header := self._reader.next(raw)) is not None:
            self._raw(raw)
            raw = bytearray()
            entry = TocEntry.from_header(header)
            if header.payload_size:
                crc: int | None = self._payload(header, entry)
            else:
                self._files.append(entry)
                crc = _EMPTY_CRC if header.size > 0 else None  # tar-split sums only non-zero sizes
            self._tar_split.file(header.name, header.size, crc)
        self._raw(raw)
        while rest := self._source.read(_TRAILER_SEGMENT):
            if rest.strip(b"\0"):
                # containers/storage parses every tar-split segment as a header: it would refuse the layer
                raise FormatError("layer tar has data other than zeros after its end-of-archive marker")
            self._raw(rest)
        self._sink.end_frame()
        self._sink.flush()

    def entries(self) -> list[TocEntry]:
        result: list[TocEntry] = []
        for item in self._files:
            if isinstance(item, TocEntry):
                result.append(item)
            else:
                result.extend(item.resolve())
        return result

    def diff_id(self) -> str:
        return "sha256:" + self._source.digest.hexdigest()

    def _raw(self, raw: bytes | bytearray) -> None:
        if raw:
            self._sink.write(bytes(raw))
            self._tar_split.segment(raw)

    def _payload(self, header: TarHeader, entry: TocEntry) -> int:
        self._sink.end_frame()
        pending = _PendingFile(entry=entry, start=self._sink.mark(), end=Mark())
        self._files.append(pending)
        frames = _ChunkFrames(self._sink, pending)
        chunker = Chunker()
        file_digest = hashlib.sha256()
        crc: int | None = None
        for block, splits in self._blocks(header.payload_size):
            file_digest.update(block)
            crc = fastcrc.crc64.go_iso(block, crc)
            for piece in chunker.feed(block, splits):
                frames.add(piece)
        for piece in chunker.finish():
            frames.add(piece)
        pending.end = self._sink.mark()
        entry.digest = "sha256:" + file_digest.hexdigest()
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
    tar: BinaryIO, out: BinaryIO, workdir: Path, *, level: int = 3, workers: int = 2
) -> ChunkedLayer:
    """Convert the tar stream `tar` into a zstd:chunked blob written sequentially to `out`."""
    with (
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="zstdchunked") as pool,
        ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="zstdchunked-rollsum"
        ) as rollsum_pool,
        TarSplitWriter(workdir / "tar-split.json.zst", level) as tar_split,
    ):
        sink = FrameSink(out, pool, level, max_pending=2 * max(1, workers) + 2)
        layer = _LayerWriter(tar, sink, tar_split, rollsum_pool, lookahead=max(1, workers) + 1)
        layer.run()
        tar_split_digest = tar_split.finish()
        manifest = toc_json(layer.entries(), tar_split_digest)
        compressed_manifest = zstandard.ZstdCompressor(level=level).compress(manifest)

        position = sink.position
        manifest_offset = position + _SKIPPABLE_HEADER
        out.write(_skippable_frame(len(compressed_manifest)))
        out.write(compressed_manifest)
        tar_split_offset = manifest_offset + len(compressed_manifest) + _SKIPPABLE_HEADER
        out.write(_skippable_frame(tar_split.compressed_size))
        with tar_split.path.open("rb") as spooled:
            shutil.copyfileobj(spooled, out, 1 << 20)
        tar_split.path.unlink()
        footer = struct.pack(
            "<7Q",
            manifest_offset,
            len(compressed_manifest),
            len(manifest),
            MANIFEST_TYPE_CRFS,
            tar_split_offset,
            tar_split.compressed_size,
            tar_split.uncompressed_size,
        )
        out.write(_skippable_frame(len(footer) + len(FOOTER_MAGIC)) + footer + FOOTER_MAGIC)

    return ChunkedLayer(
        diff_id=layer.diff_id(),
        annotations={
            MANIFEST_CHECKSUM_KEY: "sha256:" + hashlib.sha256(compressed_manifest).hexdigest(),
            MANIFEST_POSITION_KEY: (
                f"{manifest_offset}:{len(compressed_manifest)}:{len(manifest)}:{MANIFEST_TYPE_CRFS}"
            ),
            TARSPLIT_POSITION_KEY: (
                f"{tar_split_offset}:{tar_split.compressed_size}:{tar_split.uncompressed_size}"
            ),
        },
    )
