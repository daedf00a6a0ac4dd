"""One pass over a gzip blob: its decompressed bytes, and checkpoints at deflate block boundaries.

`CheckpointingReader` is a readable stream of the decompressed content (concatenated gzip members
included). Between reads it runs `inflate(…, Z_BLOCK)`, so it sees every block boundary; at each
one it asks the caller's `policy` whether to record a checkpoint there. A checkpoint holds what a
raw inflater needs to start at that boundary: the compressed offset of the block's first full
byte, the pending bits (0 to 7, in the high bits of the byte before), that byte, the uncompressed
offset, and the 32 KiB window of output before it (zero-filled before the stream start). Windows
go to a `WindowStore` (a temporary file), so memory stays flat however large the layer is.

The reader never decodes ahead of what is asked: after a read returned, every boundary up to the
stream position has been offered to `policy`, and none beyond it. `on_input` sees every byte of
the blob exactly once, in order (member headers, trailers and trailing zero padding included);
`on_output` every decompressed byte as a read returns it.
"""

from __future__ import annotations

import ctypes
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acceld.formats.checkpoints.zlib import (
    DATA_TYPE_BOUNDARY,
    DATA_TYPE_LAST_BLOCK,
    GZIP_WBITS,
    Z_BLOCK,
    Z_BUF_ERROR,
    Z_STREAM_END,
    Inflater,
)
from acceld.formats.driver import FormatError

WINDOW_SIZE = 32768
_INPUT_SIZE = 1 << 18
_OUTPUT_SIZE = 1 << 20
_GZIP_MAGIC = 0x1F


@dataclass(frozen=True)
class Checkpoint:
    """A deflate block boundary (see the module docstring). `member_start`: right after a gzip
    member header, where nothing before is referenced."""

    compressed_offset: int
    uncompressed_offset: int
    bits: int
    previous_byte: int
    member_start: bool

    @property
    def span_start(self) -> int:
        """The first compressed byte a decoder starting here reads (the partial byte, if any)."""
        return self.compressed_offset - 1 if self.bits else self.compressed_offset


Policy = Callable[[Checkpoint, "CheckpointingReader"], bool]


def every(spacing: int) -> Policy:
    """A checkpoint at the first boundary, then at the first boundary more than `spacing`
    uncompressed bytes after the previous checkpoint (SOCI's rule)."""

    def policy(boundary: Checkpoint, reader: CheckpointingReader) -> bool:
        last = reader.checkpoints[-1] if reader.checkpoints else None
        return last is None or boundary.uncompressed_offset - last.uncompressed_offset > spacing

    return policy


class WindowStore:
    """Checkpoint windows, 32 KiB each, appended to an anonymous temporary file."""

    def __init__(self, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self.count = 0

    def append(self, window: bytes | memoryview) -> None:
        if len(window) != WINDOW_SIZE:
            raise ValueError(f"a window has {WINDOW_SIZE} bytes, not {len(window)}")
        self._file.seek(self.count * WINDOW_SIZE)
        self._file.write(window)
        self.count += 1

    def get(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise IndexError(index)
        self._file.seek(index * WINDOW_SIZE)
        return self._file.read(WINDOW_SIZE)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> WindowStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckpointingReader(io.RawIOBase):
    """The decompressed content of the gzip blob `source`; see the module docstring.

    Malformed input (not gzip, corrupt deflate data, CRC/length mismatch, truncation, non-zero
    bytes after the last member) raises `FormatError`.
    """

    def __init__(
        self,
        source: BinaryIO,
        policy: Policy,
        windows: WindowStore,
        on_input: Callable[[memoryview], None] | None = None,
        on_output: Callable[[memoryview], None] | None = None,
    ) -> None:
        self._source = source
        self._policy = policy
        self._windows = windows
        self._on_input = on_input
        self._on_output = on_output
        self.checkpoints: list[Checkpoint] = []
        self._in = ctypes.create_string_buffer(_INPUT_SIZE)
        self._in_view = memoryview(self._in).cast("B")
        self._in_len = 0
        self._in_pos = 0
        self._in_base = 0  # compressed offset of _in[0]
        self._last_byte = 0
        # output history: the window before _out_pos is always _hist[_out_pos - 32K : _out_pos]
        self._hist = ctypes.create_string_buffer(WINDOW_SIZE + _OUTPUT_SIZE)
        self._hist_view = memoryview(self._hist).cast("B")
        self._out_pos = WINDOW_SIZE
        self._pending = WINDOW_SIZE  # decoded bytes [_pending, _out_pos) not yet returned
        self.uncompressed_size = 0
        self._inflater = Inflater(GZIP_WBITS)
        self._in_member = True
        self._member_start = True
        self._eof = False

    @property
    def compressed_offset(self) -> int:
        """Compressed bytes consumed so far."""
        return self._in_base + self._in_pos

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed CheckpointingReader")
        want = len(buffer)
        while self._pending == self._out_pos and not self._eof and want:
            self._step(want)
        n = min(want, self._out_pos - self._pending)
        output = self._hist_view[self._pending : self._pending + n]
        memoryview(buffer).cast("B")[:n] = output
        self._pending += n
        if self._on_output is not None and n:
            self._on_output(output)
        return n

    def window(self) -> bytes:
        """The 32 KiB of output before the current position (valid inside `policy`)."""
        return bytes(self._hist_view[self._out_pos - WINDOW_SIZE : self._out_pos])

    def finish(self) -> None:
        """Decode (and discard) whatever was not read, through the end of the blob."""
        sink = bytearray(_OUTPUT_SIZE)
        while self.readinto(sink):
            pass

    def close(self) -> None:
        self._inflater.close()
        super().close()

    def _refill(self) -> bool:
        self._in_base += self._in_len
        self._in_pos = 0
        self._in_len = self._source.readinto(self._in_view) or 0  # type: ignore[attr-defined]
        return self._in_len > 0

    def _consume(self, count: int) -> None:
        if count:
            if self._on_input is not None:
                self._on_input(self._in_view[self._in_pos : self._in_pos + count])
            self._in_pos += count
            self._last_byte = self._in_view[self._in_pos - 1]

    def _step(self, want: int) -> None:
        if self._in_pos == self._in_len and not self._refill():
            if self._in_member:
                raise FormatError(
                    f"gzip stream is truncated: it ends at byte {self.compressed_offset} inside a member"
                )
            self._eof = True
            return
        if not self._in_member:
            self._between_members()
            return
        if self._out_pos == len(self._hist_view):
            last_window = ctypes.addressof(self._hist) + self._out_pos - WINDOW_SIZE
            ctypes.memmove(self._hist, last_window, WINDOW_SIZE)
            self._out_pos = self._pending = WINDOW_SIZE
        stream = self._inflater.stream
        avail_in = self._in_len - self._in_pos
        avail_out = min(want, len(self._hist_view) - self._out_pos)
        stream.next_in = ctypes.addressof(self._in) + self._in_pos
        stream.avail_in = avail_in
        stream.next_out = ctypes.addressof(self._hist) + self._out_pos
        stream.avail_out = avail_out
        rc = self._inflater.inflate(Z_BLOCK)
        self._consume(avail_in - stream.avail_in)
        produced = avail_out - stream.avail_out
        self._out_pos += produced
        self.uncompressed_size += produced
        if rc == Z_STREAM_END:
            self._in_member = False
        elif rc == Z_BUF_ERROR and stream.avail_in:
            raise FormatError("invalid deflate stream: inflate made no progress")
        elif stream.data_type & DATA_TYPE_BOUNDARY and not stream.data_type & DATA_TYPE_LAST_BLOCK:
            self._boundary(stream.data_type & 7)

    def _boundary(self, bits: int) -> None:
        boundary = Checkpoint(
            compressed_offset=self.compressed_offset,
            uncompressed_offset=self.uncompressed_size,
            bits=bits,
            previous_byte=self._last_byte if bits else 0,
            member_start=self._member_start,
        )
        self._member_start = False
        if self._policy(boundary, self):
            self._windows.append(self._hist_view[self._out_pos - WINDOW_SIZE : self._out_pos])
            self.checkpoints.append(boundary)

    def _between_members(self) -> None:
        """After a member's trailer: another member, zero padding to the end, or an error."""
        first = self._in_view[self._in_pos]
        if first == _GZIP_MAGIC:
            self._inflater.reset(GZIP_WBITS)
            self._in_member = self._member_start = True
            return
        rest = self._in_view[self._in_pos : self._in_len]
        if any(rest):
            raise FormatError(f"gzip stream has trailing garbage at byte {self.compressed_offset}")
        self._consume(len(rest))
