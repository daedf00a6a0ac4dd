"""The eStargz writer: layer tar in, eStargz blob out (sequentially), bounded memory.

Pass 1 spools the tar to `workdir` and indexes it (`tarscan`); the entry order follows the
reference builder (`order`). Pass 2 lays the blob out exactly like the reference writer with one
part (GOMAXPROCS=1): a gzip member starts at offset 0, at every chunk of every non-empty regular
file, at the TOC and at the footer; tar headers and padding stay in the current member. Raw
header blocks and payloads are copied from the spool unchanged. Members are independent, so
they are compressed by a thread pool (libdeflate releases the GIL) with a bounded number of
batches in flight and written in order. With `min_chunk_size` the placement of a member depends
on the compressed size of the previous ones, so that mode compresses sequentially.

Names that are not valid UTF-8 are kept in the tar headers but appear with U+FFFD in the TOC, as
with the reference writer (JSON cannot carry them); such layers convert, the lazy-pull view
shows the replaced names. The driver refuses them instead (`utf8_names`): an image whose lazily
pulled files have other names than its source's is not a faithful conversion.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acceld.formats.driver import FormatError
from acceld.formats.estargz.entrystore import EntryStore
from acceld.formats.estargz.gzip_members import (
    MAX_LEVEL,
    MIN_LEVEL,
    StreamingMember,
    compress_member,
    footer,
    ustar_file_header,
)
from acceld.formats.estargz.layout import (
    ChunkStart,
    Member,
    Placements,
    Segment,
    plain_members,
    stream_events,
)
from acceld.formats.estargz.order import TOC_TAR_NAME, Items, arrange, name_key
from acceld.formats.estargz.source import open_layer_tar
from acceld.formats.estargz.tarscan import TarEntry, scan_tar
from acceld.formats.estargz.toc import TocEntry, toc_entries, toc_json_pieces
from acceld.formats.targuard import TarGuard
from acceld.formats.tarreader import BLOCK

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_COMPRESSION_LEVEL = 9
_ONESHOT_LIMIT = 16 << 20  # larger members are streamed instead of compressed in one piece
_BATCH_BYTES = 1 << 20  # small members are grouped into batches of about this size
_BATCH_MEMBERS = 512
_IN_FLIGHT_BYTES = 48 << 20  # uncompressed input of the batches being compressed or waiting to be written
_MAX_THREADS = 8  # more threads only add memory: the in-flight budget holds about this many chunks
_READ_PIECE = 1 << 20
_TOC_PREFIX = "estargz-toc-"


@dataclass(frozen=True)
class WriterOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    min_chunk_size: int = 0
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    prefetch_files: tuple[str, ...] = ()
    workers: int = 1
    # refuse names and link targets that are not UTF-8 rather than show them with U+FFFD in the TOC
    utf8_names: bool = False

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {self.chunk_size}")
        if self.min_chunk_size < 0:
            raise ValueError(f"min_chunk_size must not be negative, not {self.min_chunk_size}")
        if not MIN_LEVEL <= self.compression_level <= MAX_LEVEL:
            raise ValueError(
                f"compression_level must be {MIN_LEVEL}..{MAX_LEVEL}, not {self.compression_level}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")


@dataclass(frozen=True)
class EstargzResult:
    toc_digest: str  # "sha256:<hex>" of the TOC JSON
    diff_id: str  # "sha256:<hex>" of the decompressed blob
    uncompressed_size: int
    compressed_size: int
    missed_prefetch_files: tuple[str, ...]
    toc_size: int = 0  # bytes of the TOC JSON


class _Output:
    """The blob being written: compressed offset, chunk placements and the diff_id hash."""

    def __init__(self, out: BinaryIO, placements: Placements) -> None:
        self.out = out
        self.offset = 0
        self.uncompressed = 0
        self.diff_hash = hashlib.sha256()
        self.placements = placements

    def place(self, start: ChunkStart, member_offset: int, inner_offset: int) -> None:
        """Record where `start` landed; chunks are placed in stream order."""
        self.placements.add(member_offset, inner_offset)

    def raw(self, data: bytes | memoryview) -> None:
        self.diff_hash.update(data)
        self.uncompressed += len(data)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)


def _read_segment(fd: int, segment: Segment) -> bytes:
    if not isinstance(segment, tuple):
        return segment
    offset, length = segment
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError("spool file ended early (was it modified during conversion?)")
    return data


def _segment_pieces(fd: int, segment: Segment) -> Iterator[bytes]:
    if not isinstance(segment, tuple):
        yield segment
        return
    offset, length = segment
    for start in range(0, length, _READ_PIECE):
        yield _read_segment(fd, (offset + start, min(_READ_PIECE, length - start)))


def _compress_batch(fd: int, members: list[Member], level: int) -> list[tuple[bytes, bytes]]:
    results = []
    for member in members:
        raw = b"".join(_read_segment(fd, segment) for segment in member.segments)
        results.append((raw, compress_member(raw, level)))
    return results


def _write_streamed(fd: int, member: Member, level: int, output: _Output) -> None:
    for start in member.starts:
        output.place(start, output.offset, 0)
    stream = StreamingMember(level)
    for segment in member.segments:
        for piece in _segment_pieces(fd, segment):
            output.raw(piece)
            output.write(stream.write(piece))
    output.write(stream.close())


def _write_parallel(fd: int, members: Iterator[Member], options: WriterOptions, output: _Output) -> None:
    """Compress batches of members on `workers` threads; write them in order as they complete.

    At most one batch more than there are threads, and at most `_IN_FLIGHT_BYTES` of input, are
    in flight, so memory does not grow with the layer or with `workers`.
    """
    level = options.compression_level
    threads = min(options.workers, _MAX_THREADS)
    pending: deque[tuple[list[Member], int, Future[list[tuple[bytes, bytes]]]]] = deque()
    in_flight = 0

    def drain_one() -> None:
        nonlocal in_flight
        batch, batch_bytes, future = pending.popleft()
        results = future.result()
        offset = output.offset
        for member, (raw, compressed) in zip(batch, results, strict=True):
            for start in member.starts:
                output.place(start, offset, 0)
            output.raw(raw)
            offset += len(compressed)
        output.write(b"".join(compressed for _, compressed in results))
        in_flight -= batch_bytes

    with ThreadPoolExecutor(threads, thread_name_prefix="estargz-gzip") as pool:
        batch: list[Member] = []
        batch_bytes = 0

        def submit() -> None:
            nonlocal batch, batch_bytes, in_flight
            if batch:
                pending.append((batch, batch_bytes, pool.submit(_compress_batch, fd, batch, level)))
                in_flight += batch_bytes
                batch, batch_bytes = [], 0
            while len(pending) > threads + 1 or (len(pending) > 1 and in_flight > _IN_FLIGHT_BYTES):
                drain_one()

        try:
            for member in members:
                if member.size > _ONESHOT_LIMIT:
                    submit()
                    while pending:
                        drain_one()
                    _write_streamed(fd, member, level, output)
                    continue
                batch.append(member)
                batch_bytes += member.size
                if batch_bytes >= _BATCH_BYTES or len(batch) >= _BATCH_MEMBERS:
                    submit()
            submit()
            while pending:
                drain_one()
        finally:
            for _, _, future in pending:
                future.cancel()


def _write_min_chunk(
    fd: int,
    events: Iterator[Segment | ChunkStart],
    items: Items,
    options: WriterOptions,
    output: _Output,
) -> None:
    """Chunks share a member until it holds `min_chunk_size` compressed bytes (innerOffset)."""
    level = options.compression_level
    member = StreamingMember(level)
    member_offset = output.offset
    for event in events:
        if isinstance(event, ChunkStart):
            output.write(member.flush())
            landmark = items.is_landmark(event.item)
            if member.uncompressed and (landmark or output.offset - member_offset >= options.min_chunk_size):
                output.write(member.close())
                member = StreamingMember(level)
                member_offset = output.offset
            output.place(event, member_offset, member.uncompressed)
            continue
        for piece in _segment_pieces(fd, event):
            output.raw(piece)
            output.write(member.write(piece))
    if member.uncompressed:
        output.write(member.close())


def _write_member(fd: int, member: Member, level: int, output: _Output) -> None:
    if member.size > _ONESHOT_LIMIT:
        _write_streamed(fd, member, level, output)
        return
    ((raw, compressed),) = _compress_batch(fd, [member], level)
    output.raw(raw)
    output.write(compressed)


def _write_toc(entries: Iterator[TocEntry], level: int, output: _Output, workdir: Path) -> tuple[str, int]:
    """TOC member (tar header, JSON, tar end) and footer; returns the TOC's digest and size.

    The JSON goes through a scratch file: it can be tens of MB for layers with many files.
    """
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile(dir=workdir, prefix=_TOC_PREFIX) as scratch:
        with open(scratch.fileno(), "wb", buffering=_READ_PIECE, closefd=False) as writer:
            for piece in toc_json_pieces(entries):
                digest.update(piece)
                size += len(piece)
                writer.write(piece)
        member = Member()
        for segment in (ustar_file_header(TOC_TAR_NAME, size), (0, size), bytes(-size % BLOCK + 2 * BLOCK)):
            member.add(segment)
        toc_offset = output.offset
        _write_member(scratch.fileno(), member, level, output)
    output.write(footer(toc_offset))
    return "sha256:" + digest.hexdigest(), size


def _utf8_problem(entry: TarEntry) -> FormatError | None:
    for what, text in (("name", entry.name), ("link target", entry.linkname)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return FormatError(
                f"tar entry {entry.name!r}: the {what} is not valid UTF-8; the eStargz TOC (JSON) "
                "would show it with U+FFFD to lazy-pulling readers"
            )
    return None


def _index_layer(
    tar: BinaryIO, spool: BinaryIO, store: EntryStore, options: WriterOptions, guard: TarGuard | None
) -> None:
    """Spool the tar and file its entries in `store`; a name that is not UTF-8 is reported only
    once the whole tar has been read (damage of the tar itself is reported first)."""
    problem: FormatError | None = None
    for entry in scan_tar(tar, spool, options.chunk_size, guard):
        if options.utf8_names and problem is None:
            problem = _utf8_problem(entry)
        store.append(entry, name_key(entry.name))
    if problem is not None:
        raise problem
    store.seal()


def write_estargz(
    source: BinaryIO, out: BinaryIO, workdir: Path, options: WriterOptions, guard: TarGuard | None = None
) -> EstargzResult:
    """Convert the layer tar in `source` (plain, gzip or zstd) into an eStargz blob written to `out`;
    `guard` (a TarGuard watching the tar whose headers were taken) is handed every header."""
    tar = open_layer_tar(source)
    with (
        EntryStore(workdir) as store,
        tempfile.TemporaryFile(dir=workdir, prefix="estargz-spool-") as spool,
    ):
        with open(spool.fileno(), "wb", buffering=_READ_PIECE, closefd=False) as spool_writer:
            _index_layer(tar, spool_writer, store, options, guard)
        while tar.read(_READ_PIECE):
            pass  # read past the tar's end so that gzip checksums and trailing garbage are checked
        items, missed = arrange(store, options.prefetch_files)
        placements = Placements()
        output = _Output(out, placements)
        events = stream_events(items, options.chunk_size)
        if options.min_chunk_size > 0:
            _write_min_chunk(spool.fileno(), events, items, options, output)
        else:
            _write_parallel(spool.fileno(), plain_members(events), options, output)
        entries_json = toc_entries(items, placements, options.chunk_size)
        toc_digest, toc_size = _write_toc(entries_json, options.compression_level, output, workdir)
    return EstargzResult(
        toc_digest=toc_digest,
        diff_id="sha256:" + output.diff_hash.hexdigest(),
        uncompressed_size=output.uncompressed,
        compressed_size=output.offset,
        missed_prefetch_files=tuple(missed),
        toc_size=toc_size,
    )
