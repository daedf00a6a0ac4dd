"""Inflating from a checkpoint: raw inflate primed with the pending bits and the 32 KiB window."""

from __future__ import annotations

import ctypes

from acceld.formats.checkpoints.zlib import (
    GZIP_WBITS,
    RAW_WBITS,
    Z_BUF_ERROR,
    Z_NO_FLUSH,
    Z_STREAM_END,
    Inflater,
)
from acceld.formats.driver import FormatError

_GZIP_TRAILER = 8
_GZIP_MAGIC = 0x1F
_OUTPUT_STEP = 1 << 20


def inflate_from(data: bytes, bits: int, window: bytes, limit: int | None = None) -> bytes:
    """The output of decoding `data` from a checkpoint, at most `limit` bytes.

    `data` starts at the checkpoint's first compressed byte: the byte holding the `bits` pending
    bits (in its high bits) when `bits` is not 0, else the block's first byte. Decoding goes on
    across gzip member ends (trailer skipped, next member's header parsed) until `limit` bytes are
    produced or `data` is used up; zero padding after a member ends it.
    """
    if not 0 <= bits <= 7:
        raise FormatError(f"checkpoint bits {bits} is not in 0..7")
    if bits and not data:
        raise FormatError("checkpoint with pending bits but no data")
    inflater = Inflater(RAW_WBITS)
    try:
        start = 0
        if bits:
            inflater.prime(bits, data[0] >> (8 - bits))
            start = 1
        if window:
            inflater.set_dictionary(window)
        return _run(inflater, data, start, limit)
    finally:
        inflater.close()


def _run(inflater: Inflater, data: bytes, start: int, limit: int | None) -> bytes:
    source = ctypes.create_string_buffer(data, len(data))
    base = ctypes.addressof(source)
    out = bytearray()
    pos = start
    gzip_mode = False  # a raw inflater leaves the member trailer unread; a gzip one reads it
    stream = inflater.stream
    while pos < len(data) and (limit is None or len(out) < limit):
        room = _OUTPUT_STEP if limit is None else min(_OUTPUT_STEP, limit - len(out))
        chunk = ctypes.create_string_buffer(room)
        stream.next_in = base + pos
        stream.avail_in = len(data) - pos
        stream.next_out = ctypes.addressof(chunk)
        stream.avail_out = room
        rc = inflater.inflate(Z_NO_FLUSH)
        pos = len(data) - stream.avail_in
        out += chunk.raw[: room - stream.avail_out]
        if rc == Z_STREAM_END:
            if not gzip_mode:
                pos += _GZIP_TRAILER
            if pos >= len(data) or data[pos] != _GZIP_MAGIC:
                break  # the end, or zero padding after the last member
            inflater.reset(GZIP_WBITS)
            gzip_mode = True
        elif rc == Z_BUF_ERROR:
            break  # input ends inside the stream: the caller asked for a range, not a whole member
    return bytes(out)
