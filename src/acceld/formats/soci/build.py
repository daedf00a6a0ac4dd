"""Building one layer's zTOC in a single pass over its blob.

gzip layers: the blob streams through `CheckpointingReader` (checkpoints by SOCI's rule: the
first block boundary, then the first boundary more than `span_size` uncompressed bytes after the
previous checkpoint); every compressed byte also goes to the hash of the span it belongs to (a
span starts at its checkpoint's partial byte, so with pending bits that byte is hashed by both
neighbours); the decompressed bytes feed the tar scanner for the TOC. Uncompressed tar layers:
spans are fixed slices of the blob. Windows live in a temporary file under `workdir`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from acceld.formats.checkpoints import Checkpoint, CheckpointingReader, WindowStore, every
from acceld.formats.driver import SkipLayer
from acceld.formats.soci.toc import read_toc
from acceld.formats.soci.zinfo import gzip_zinfo_size, tar_span_count, tar_zinfo, write_gzip_zinfo
from acceld.formats.soci.ztoc import GZIP, UNCOMPRESSED, VERSION, Ztoc, ZtocWriter, write_ztoc

_BUFFER = 1 << 20


class _SpanHashes:
    """sha256 of every span's compressed bytes; a new span starts at each accepted checkpoint."""

    def __init__(self, span_size: int) -> None:
        self._policy = every(span_size)
        self._current: Any = None
        self.digests: list[str] = []

    def policy(self, boundary: Checkpoint, reader: CheckpointingReader) -> bool:
        if not self._policy(boundary, reader):
            return False
        self._close()
        self._current = hashlib.sha256()
        if boundary.bits:
            self._current.update(bytes([boundary.previous_byte]))
        return True

    def feed(self, data: memoryview) -> None:
        if self._current is not None:
            self._current.update(data)

    def _close(self) -> None:
        if self._current is not None:
            self.digests.append("sha256:" + self._current.hexdigest())

    def finish(self) -> list[str]:
        self._close()
        self._current = None
        return self.digests


def build_gzip_ztoc(
    blob: BinaryIO,
    out: BinaryIO,
    span_size: int,
    workdir: Path,
    build_tool: str,
    on_tar: Callable[[memoryview], None] | None = None,
) -> None:
    hashes = _SpanHashes(span_size)
    size = 0

    def on_input(data: memoryview) -> None:
        nonlocal size
        size += len(data)
        hashes.feed(data)

    writer = ZtocWriter()
    with WindowStore(workdir) as windows:
        reader = CheckpointingReader(blob, hashes.policy, windows, on_input=on_input, on_output=on_tar)
        buffered = io.BufferedReader(reader, _BUFFER)  # closing it (also when collected) ends the inflater
        toc = read_toc(cast(BinaryIO, buffered), writer.add)
        reader.finish()
        if not writer.count:
            raise SkipLayer("the layer has no files")
        points = reader.checkpoints
        digests = hashes.finish()
        archive_size = toc.archive_size
        if points and points[-1].uncompressed_offset >= archive_size:
            # a checkpoint in the data after the end-of-archive marker: the last span reaches the end
            archive_size = reader.uncompressed_size
        header = Ztoc(
            version=VERSION,
            build_tool=build_tool,
            compressed_archive_size=size,
            uncompressed_archive_size=archive_size,
            entries=(),  # already added to the writer
            algorithm=GZIP,
            max_span_id=len(points) - 1,
            span_digests=digests,
            checkpoints=b"",
        )

        def write_checkpoints(target: BinaryIO) -> None:
            write_gzip_zinfo(target, span_size, points, windows)

        writer.finish(header, out, gzip_zinfo_size(len(points)), write_checkpoints)


class _FixedSpans(io.RawIOBase):
    """Passes a stream through and hashes it in fixed slices of `span_size` bytes."""

    def __init__(self, inner: BinaryIO, span_size: int, on_tar: Callable[[memoryview], None] | None) -> None:
        self._inner = inner
        self._on_tar = on_tar
        self._span_size = span_size
        self._hash = hashlib.sha256()
        self._filled = 0
        self.size = 0
        self.digests: list[str] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = int(self._inner.readinto(buffer) or 0)  # type: ignore[attr-defined]
        view = memoryview(buffer).cast("B")[:n]
        if self._on_tar is not None and n:
            self._on_tar(view)
        while view:
            take = min(len(view), self._span_size - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == self._span_size:
                self.digests.append("sha256:" + self._hash.hexdigest())
                self._hash, self._filled = hashlib.sha256(), 0
        self.size += n
        return n

    def finish(self) -> list[str]:
        sink = bytearray(_BUFFER)
        while self.readinto(sink):
            pass
        if self._filled or not self.digests:
            self.digests.append("sha256:" + self._hash.hexdigest())
        return self.digests


def build_tar_ztoc(
    blob: BinaryIO,
    out: BinaryIO,
    span_size: int,
    build_tool: str,
    on_tar: Callable[[memoryview], None] | None = None,
) -> None:
    spans = _FixedSpans(blob, span_size, on_tar)
    buffered = io.BufferedReader(spans, _BUFFER)
    toc = read_toc(cast(BinaryIO, buffered))
    digests = spans.finish()
    if not toc.entries:
        raise SkipLayer("the layer has no files")
    assert len(digests) == tar_span_count(spans.size, span_size)
    zinfo = tar_zinfo(span_size, spans.size)
    header = Ztoc(
        version=VERSION,
        build_tool=build_tool,
        compressed_archive_size=spans.size,
        uncompressed_archive_size=toc.archive_size,
        entries=toc.entries,
        algorithm=UNCOMPRESSED,
        max_span_id=len(digests) - 1,
        span_digests=digests,
        checkpoints=zinfo,
    )
    write_ztoc(header, out)
