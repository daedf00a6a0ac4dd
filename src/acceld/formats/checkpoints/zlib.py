"""The system zlib through ctypes: the parts of `inflate` the stdlib module does not expose.

Checkpoints need `inflate(…, Z_BLOCK)` (stop at deflate block boundaries and report the pending
bits in `data_type`), `inflatePrime` (resume in the middle of a byte) and `inflateSetDictionary`
on a raw stream. `libz.so.1` is present wherever CPython's `zlib` module is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from acceld.formats.driver import FormatError

Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
Z_NO_FLUSH = 0
Z_BLOCK = 5

GZIP_WBITS = 15 + 16  # gzip header and trailer, no zlib auto-detection
RAW_WBITS = -15

# data_type bits after inflate(Z_BLOCK): pending bits in the low 3, and these flags
DATA_TYPE_LAST_BLOCK = 64
DATA_TYPE_BOUNDARY = 128


class ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


def _load() -> Any:
    try:
        lib = ctypes.CDLL("libz.so.1")
    except OSError:  # not the usual soname: ask the system (find_library runs ldconfig, ~20 ms)
        lib = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so")
    stream = ctypes.POINTER(ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflateReset2.argtypes = [stream, ctypes.c_int]
    lib.inflate.argtypes = [stream, ctypes.c_int]
    lib.inflatePrime.argtypes = [stream, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [stream, ctypes.c_char_p, ctypes.c_uint]
    lib.inflateEnd.argtypes = [stream]
    return lib


_LIB = _load()
_VERSION: bytes = _LIB.zlibVersion()


class Inflater:
    """One zlib inflate stream. The caller points `stream.next_in`/`next_out` at buffers it keeps alive."""

    def __init__(self, wbits: int) -> None:
        self.stream = ZStream()
        self._ref = ctypes.byref(self.stream)
        self._check(_LIB.inflateInit2_(self._ref, wbits, _VERSION, ctypes.sizeof(ZStream)), "init")
        self._open = True

    def _check(self, rc: int, what: str) -> None:
        if rc != Z_OK:
            detail = self.stream.msg.decode(errors="replace") if self.stream.msg else f"zlib error {rc}"
            raise FormatError(f"inflate {what}: {detail}")

    def inflate(self, flush: int) -> int:
        """zlib's return code; Z_OK, Z_STREAM_END and Z_BUF_ERROR are for the caller, others raise."""
        rc: int = _LIB.inflate(self._ref, flush)
        if rc in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
            return rc
        if rc == Z_NEED_DICT:
            raise FormatError("invalid deflate stream: it asks for a preset dictionary")
        detail = self.stream.msg.decode(errors="replace") if self.stream.msg else f"zlib error {rc}"
        raise FormatError(f"invalid deflate stream: {detail}")

    def reset(self, wbits: int) -> None:
        self._check(_LIB.inflateReset2(self._ref, wbits), "reset")

    def prime(self, bits: int, value: int) -> None:
        self._check(_LIB.inflatePrime(self._ref, bits, value), "prime")

    def set_dictionary(self, window: bytes) -> None:
        self._check(_LIB.inflateSetDictionary(self._ref, window, len(window)), "set dictionary")

    def close(self) -> None:
        if self._open:
            _LIB.inflateEnd(self._ref)
            self._open = False

    def __del__(self) -> None:
        self.close()
