"""Resuming DEFLATE at a checkpoint with Python's own zlib only — an independent check of the
ctypes-based writer in `acceld.formats.checkpoints`.

Python's `zlib.decompressobj(wbits=-15, zdict=window)` presets the window of a raw stream but
cannot prime a bit offset. So the decoder is fed a few bytes first whose bits are complete,
non-final, *empty* deflate blocks (they emit nothing, so the window stays untouched) followed by
the `bits` pending bits of the checkpoint's first byte; the empty blocks are chosen so the whole
prefix is a whole number of bytes, which keeps every later byte boundary (stored blocks) aligned.

Empty fixed-Huffman block: 10 bits. Empty dynamic block with one literal code (end-of-block) and
one distance code: 93 bits. Their combinations reach every residue mod 8.
"""

from __future__ import annotations

import zlib

_TRAILER = 8


class _Bits:
    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, width: int) -> None:
        """`width` bits of `value`, least significant first (deflate's order for header fields)."""
        self.value |= (value & ((1 << width) - 1)) << self.count
        self.count += width

    def to_bytes(self) -> bytes:
        assert self.count % 8 == 0, self.count
        return self.value.to_bytes(self.count // 8, "little")


def _empty_fixed(bits: _Bits) -> None:
    bits.put(0, 1)  # BFINAL
    bits.put(1, 2)  # BTYPE fixed
    bits.put(0, 7)  # end-of-block: the 7-bit code 0000000


# code length alphabet order of the HCLEN lengths (RFC 1951 3.2.7)
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _empty_dynamic(bits: _Bits) -> None:
    bits.put(0, 1)  # BFINAL
    bits.put(2, 2)  # BTYPE dynamic
    bits.put(0, 5)  # HLIT: 257 literal/length codes
    bits.put(0, 5)  # HDIST: 1 distance code
    bits.put(15, 4)  # HCLEN: 19 code length codes
    for symbol in _CL_ORDER:  # only symbols 1 and 18 get length 1: code 0 = symbol 1, code 1 = 18
        bits.put(1 if symbol in (1, 18) else 0, 3)
    bits.put(1, 1)  # 18: repeat zero 11 + 7 extra bits
    bits.put(127, 7)  # 138 zeros
    bits.put(1, 1)
    bits.put(107, 7)  # 118 zeros: literals 0-255 unused
    bits.put(0, 1)  # symbol 1: literal 256 (end-of-block) has length 1
    bits.put(0, 1)  # symbol 1: distance code 0 has length 1
    bits.put(0, 1)  # the block's body: end-of-block


def priming_prefix(bits: int, first_byte: int) -> bytes:
    """Bytes that put a raw decoder where the checkpoint's `bits` pending bits begin."""
    if bits == 0:
        return b""
    need = 8 - bits
    writer = _Bits()
    if need % 2:  # 5, 7, 1, 3: one dynamic block (93 ≡ 5) plus 0..3 fixed ones (10 ≡ 2 each)
        _empty_dynamic(writer)
        fixed = ((need - 5) % 8) // 2
    else:
        fixed = need // 2
    for _ in range(fixed):
        _empty_fixed(writer)
    writer.put(first_byte >> (8 - bits), bits)
    return writer.to_bytes()


def resume(data: bytes, bits: int, window: bytes, size: int) -> bytes:
    """`size` bytes decoded from a checkpoint; `data` starts at the byte holding the pending bits
    (when `bits` ≠ 0). Crosses gzip member ends."""
    prefix = priming_prefix(bits, data[0]) if bits else b""
    body = data[1:] if bits else data
    decoder = zlib.decompressobj(wbits=-15, zdict=window)
    out = decoder.decompress(prefix + body, size)
    rest = decoder.unused_data
    while len(out) < size and decoder.eof and len(rest) > _TRAILER and rest[_TRAILER] == 0x1F:
        decoder = zlib.decompressobj(wbits=31)
        out += decoder.decompress(rest[_TRAILER:], size - len(out))
        rest = b"\0" * _TRAILER + decoder.unused_data  # gzip mode consumed its own trailer
    return out
