"""gzip members, the TOC tar header and the 51-byte footer.

Members are compressed in one shot with libdeflate or, when they are too large to hold in memory
or must be flushed midway (minChunkSize), streamed through zlib-ng. Either way the result is a
standard gzip member.

`level` is on the gzip/zlib scale (0-9, Go's `compress/gzip` uses the same one). libdeflate has its
own scale (up to 12); measured on the benchmark layer and on /usr, libdeflate at level L compresses
at least as well as zlib at level L for L <= 7, and libdeflate 7 already beats zlib 9 (0.4616 vs
0.4632 of the input) while libdeflate 8 and 9 take twice as long for 0.3 % less. So levels 8 and
9 use libdeflate 7 (see docs/benchmarks.md, eStargz section).
"""

from __future__ import annotations

import struct
import zlib

import deflate
from zlib_ng import zlib_ng

MIN_LEVEL, MAX_LEVEL = 0, 9
_LIBDEFLATE_MAX_USEFUL_LEVEL = 7
_GZIP_OS_UNKNOWN = 255


def gzip_header(level: int) -> bytes:
    """The header Go's gzip writer emits: no name, MTIME 0, XFL by level, OS 255."""
    extra_flags = 2 if level == 9 else 4 if level == 1 else 0
    return bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, extra_flags, _GZIP_OS_UNKNOWN])


def gzip_trailer(crc: int, size: int) -> bytes:
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def compress_member(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """One complete gzip member holding `data` (releases the GIL while compressing)."""
    body = deflate.deflate_compress(data, min(level, _LIBDEFLATE_MAX_USEFUL_LEVEL))
    return gzip_header(level) + body + gzip_trailer(zlib.crc32(data), len(data))


class StreamingMember:
    """A gzip member written piece by piece; `flush` makes the compressed size exact so far."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -15)
        self._crc = 0
        self.uncompressed = 0
        self._started = False

    def write(self, data: bytes | bytearray | memoryview) -> bytes:
        out = b"" if self._started else gzip_header(self.level)
        self._started = True
        self._crc = zlib.crc32(data, self._crc)
        self.uncompressed += len(data)
        return out + self._compressor.compress(data)

    def flush(self) -> bytes:
        """Everything written so far, on a byte boundary (a deflate sync flush)."""
        head = b"" if self._started else gzip_header(self.level)
        self._started = True
        return head + self._compressor.flush(zlib_ng.Z_SYNC_FLUSH)

    def close(self) -> bytes:
        head = b"" if self._started else gzip_header(self.level)
        return head + self._compressor.flush(zlib_ng.Z_FINISH) + gzip_trailer(self._crc, self.uncompressed)


def ustar_file_header(name: str, size: int) -> bytes:
    """The USTAR header Go writes for the TOC and the landmarks: mode, ids and mtime all 0."""
    block = bytearray(512)
    encoded = name.encode()
    block[0 : len(encoded)] = encoded
    for start in (100, 108, 116, 329, 337):  # mode, uid, gid, devmajor, devminor
        block[start : start + 8] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer: an empty gzip member whose Extra field holds the TOC offset."""
    extra = b"SG" + struct.pack("<H", 22) + b"%016xSTARGZ" % toc_offset
    header = bytes([0x1F, 0x8B, 8, 4, 0, 0, 0, 0, 0, _GZIP_OS_UNKNOWN]) + struct.pack("<H", len(extra))
    return header + extra + bytes([1, 0, 0, 0xFF, 0xFF]) + bytes(8)
