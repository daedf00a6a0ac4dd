"""The layer stream as an uncompressed tar: plain tar passes through; gzip and zstd input (which the
reference builder also accepts) is decompressed on the fly. Stream damage becomes `FormatError`."""

from __future__ import annotations

import io
from typing import BinaryIO

import zstandard
from isal import isal_zlib

from acceld.formats.driver import FormatError

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_SIZE = 1 << 20


class _Prefixed(io.RawIOBase):
    """`prefix` followed by the rest of `stream`."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._prefix:
            count = min(len(view), len(self._prefix))
            view[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)


class _GzipStream(io.RawIOBase):
    """Decompresses concatenated gzip members, like Go's multistream gzip reader."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._inflater = isal_zlib.decompressobj(31)
        self._pending = b""
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while not self._finished:
            if not self._pending:
                self._pending = self._stream.read(_READ_SIZE)
                if not self._pending and not self._inflater.eof:
                    raise FormatError("bad gzip: the stream is truncated")
            if self._inflater.eof:
                self._next_member()
                continue
            try:
                data = self._inflater.decompress(self._pending, len(view))
            except Exception as exc:  # isal_zlib.error (IsalError) is untyped in isal's stubs
                raise FormatError(f"bad gzip: {exc}") from None
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
            if data:
                view[: len(data)] = data
                return len(data)
        return 0

    def _next_member(self) -> None:
        if not self._pending:
            self._pending = self._stream.read(_READ_SIZE)
        if not self._pending:
            self._finished = True
        elif not self._pending.startswith(_GZIP_MAGIC[: len(self._pending)]):
            raise FormatError("bad gzip: garbage after a gzip member")
        else:
            self._inflater = isal_zlib.decompressobj(31)


class _ZstdErrors(io.RawIOBase):
    def __init__(self, reader: BinaryIO) -> None:
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        try:
            data = self._reader.read(len(view))
        except zstandard.ZstdError as exc:
            raise FormatError(f"bad zstd: {exc}") from None
        view[: len(data)] = data
        return len(data)


def open_layer_tar(stream: BinaryIO) -> BinaryIO:
    """A buffered reader of the uncompressed tar in `stream` (plain, gzip or zstd)."""
    magic = stream.read(4)
    while len(magic) < 4:
        more = stream.read(4 - len(magic))
        if not more:
            break
        magic += more
    raw: io.RawIOBase = _Prefixed(magic, stream)
    if magic.startswith(_GZIP_MAGIC):
        raw = _GzipStream(io.BufferedReader(raw, _READ_SIZE))
    elif magic == _ZSTD_MAGIC:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw), read_across_frames=True)
        raw = _ZstdErrors(reader)
    return io.BufferedReader(raw, _READ_SIZE)
