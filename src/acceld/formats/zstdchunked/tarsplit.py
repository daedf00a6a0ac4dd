"""tar-split metadata (vbatts/tar-split JSON lines), zstd-compressed into a spool file.

Each line is one storage.Entry: type 2 ("segment") carries raw tar bytes that are not file
content (headers, padding, end-of-archive blocks), type 1 ("file") names a file and carries
the CRC-64/ISO (as Go's hash/crc64 computes it) of its content. Segments plus contents
re-create the original tar stream.
"""

from __future__ import annotations

import binascii
import hashlib
import posixpath
from collections import deque
from concurrent.futures import Executor, Future, wait
from pathlib import Path
from types import TracebackType
from typing import Self

import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.zstdchunked import gojson
from acceld.formats.zstdchunked.names import NameLog
from acceld.formats.zstdchunked.spool import create_spool

FILE_TYPE = 1
SEGMENT_TYPE = 2
_BATCH_BYTES = 1 << 16  # lines are compressed in batches of about this many bytes
_BACKLOG = 8  # batches waiting for the compressing thread


def _go_clean(name: str) -> str:
    if name and "//" not in name and "/." not in name and name[0] != "." and name[-1] != "/":
        return name  # no empty, "." or ".." component: already clean (most names)
    cleaned = posixpath.normpath(name)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


class TarSplitWriter:
    """Streams tar-split lines through one zstd frame into `path` (removed on exit).

    With `executor` (a single thread), batches of lines are compressed and written there, in
    order, while the caller goes on reading the tar.
    """

    def __init__(self, path: Path, level: int, executor: Executor | None = None) -> None:
        self.path = path
        self._executor = executor
        self._compressing: deque[Future[None]] = deque()
        self._file = create_spool(path)
        self._compressor = zstandard.ZstdCompressor(level=level).compressobj()
        self._digest = hashlib.sha256()
        self._position = 0
        self._names = NameLog(path.with_name(path.name + ".names"), _go_clean)
        self._lines: list[bytes] = []  # built as bytes: segment lines are mostly base64
        self._batched = 0
        self.uncompressed_size = 0
        self.compressed_size = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        wait(self._compressing)  # nothing may write to the spool once it is closed
        self._file.close()
        self.path.unlink(missing_ok=True)
        self._names.close()
        self._names.path.unlink(missing_ok=True)

    def segment(self, raw: bytes | bytearray) -> None:
        if raw:
            payload = binascii.b2a_base64(raw, newline=False)
            self._line(b'{"type":%d,"payload":"%b","position":%d}' % (SEGMENT_TYPE, payload, self._position))

    def file(self, name: str, size: int, crc64: int | None) -> None:
        self._names.add(name)
        if name.isascii():
            name_field = f'"name":{gojson.string(name)},' if name else ""
        else:
            raw_name = name.encode("utf-8", "surrogateescape")
            try:
                raw_name.decode("utf-8")
                name_field = f'"name":{gojson.string(name)},'
            except UnicodeDecodeError:
                name_field = f'"name_raw":{gojson.b64(raw_name)},'
        size_field = f'"size":{size},' if size else ""
        payload = gojson.b64(crc64.to_bytes(8, "big")) if crc64 is not None else "null"
        self._line(
            f'{{"type":{FILE_TYPE},{name_field}{size_field}"payload":{payload},"position":{self._position}}}'.encode()
        )

    def _line(self, line: bytes) -> None:
        self._lines.append(line)
        self._batched += len(line)
        self._position += 1
        if self._batched >= _BATCH_BYTES:
            self._compress_lines()

    def _compress_lines(self) -> None:
        if self._lines:
            self._lines.append(b"")
            data = b"\n".join(self._lines)
            self._lines.clear()
            self._batched = 0
            self.uncompressed_size += len(data)
            if self._executor is None:
                self._compress(data)
                return
            self._compressing.append(self._executor.submit(self._compress, data))
            while len(self._compressing) > _BACKLOG:
                self._compressing.popleft().result()

    def _compress(self, data: bytes) -> None:
        self._emit(self._compressor.compress(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self._digest.update(data)
            self.compressed_size += len(data)

    def finish(self) -> str:
        """Close the zstd frame; returns the sha256 digest of the compressed bytes."""
        duplicate = self._names.first_duplicate()
        if duplicate is not None:
            raise FormatError(f"layer tar has two entries for {duplicate!r}; tar-split cannot represent that")
        self._compress_lines()
        while self._compressing:
            self._compressing.popleft().result()
        self._emit(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        self._file.close()
        return "sha256:" + self._digest.hexdigest()
