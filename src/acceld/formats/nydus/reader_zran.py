"""zran (OCI-ref) blobs for the independent reader: context tables and chunk data from the gzip layer.

A zran blob keeps no chunk data: the blob meta (in a separate "ref" blob) holds CI v2 entries that
point into zran contexts, each a deflate checkpoint in the original gzip layer (offset, pending bits
and the 32 KiB window). A chunk is read by raw-inflating the context's gzip byte range from its
checkpoint and slicing the output (docs/formats/nydus-zran.md §5, §8).

Resuming at a bit offset uses only the stdlib: a prefix of complete, empty deflate blocks whose
length makes the pending bits of the previous byte land on a byte boundary (nydus-zran.md §11,
soci.md §14.3 option 2), so no code is shared with the writer's ctypes checkpoint engine.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from acceld.formats.nydus.reader_common import BlobError, Mapped, u8, u16, u32, u64

CONTEXT_SIZE: Final = 40
CI_V2_SIZE: Final = 24
MAX_WINDOW: Final = 32768
MAX_CONTEXT_OUTPUT: Final = 16 << 20  # RAFS_MAX_CHUNK_SIZE, enforced by nydusd at read time
CI_COMPRESSED: Final = 0x01
CI_ZRAN: Final = 0x02
CI_HAS_CRC32: Final = 0x10
_READ_SIZE: Final = 1 << 20


@dataclass(frozen=True)
class ZranContext:
    """One 40-byte `ZranInflateContext` with its dictionary."""

    index: int
    in_offset: int
    out_offset: int
    dict_offset: int
    in_len: int
    out_len: int
    dict_size: int
    ctx_byte: int
    ctx_bits: int
    window: bytes


def parse_zran_tables(
    ci_raw: Mapped, chunk_count: int, zran_offset: int, zran_size: int, zran_count: int, where: str
) -> list[ZranContext]:
    """The context table and dictionaries that follow the CI v2 array in the uncompressed blob meta."""
    if zran_offset != CI_V2_SIZE * chunk_count:
        raise BlobError(f"{where}: ci_zran_offset {zran_offset}, expected 24 x {chunk_count} CI entries")
    if zran_offset + zran_size > len(ci_raw):
        raise BlobError(
            f"{where}: zran tables {zran_offset}+{zran_size} run past the {len(ci_raw)}-byte blob meta"
        )
    if zran_count > chunk_count or CONTEXT_SIZE * zran_count > zran_size:
        raise BlobError(
            f"{where}: {zran_count} zran contexts do not fit {chunk_count} chunks / {zran_size} bytes"
        )
    table = ci_raw[zran_offset : zran_offset + zran_size]
    dictionaries = table[CONTEXT_SIZE * zran_count :]
    contexts: list[ZranContext] = []
    expected_dict_offset = 0
    for i in range(zran_count):
        at = CONTEXT_SIZE * i
        ctx = ZranContext(
            index=i,
            in_offset=u64(table, at),
            out_offset=u64(table, at + 8),
            dict_offset=u64(table, at + 16),
            in_len=u32(table, at + 24),
            out_len=u32(table, at + 28),
            dict_size=u32(table, at + 32),
            ctx_byte=u8(table, at + 36),
            ctx_bits=u8(table, at + 37),
            window=b"",
        )
        here = f"{where}: zran context {i}"
        if u16(table, at + 38):
            raise BlobError(f"{here}: reserved bytes 38..40 are not 0")
        if ctx.dict_offset != expected_dict_offset:
            raise BlobError(
                f"{here}: dict_offset {ctx.dict_offset}, expected the running sum {expected_dict_offset}"
            )
        if ctx.dict_size > MAX_WINDOW or ctx.ctx_bits > 7:
            raise BlobError(f"{here}: dict_size {ctx.dict_size} > 32768 or ctx_bits {ctx.ctx_bits} > 7")
        if not 0 < ctx.out_len <= MAX_CONTEXT_OUTPUT or ctx.in_len == 0:
            raise BlobError(f"{here}: in_len {ctx.in_len} / out_len {ctx.out_len} outside 1..16 MiB")
        if contexts and ctx.in_offset <= contexts[-1].in_offset:
            raise BlobError(
                f"{here}: in_offset {ctx.in_offset} does not increase (previous {contexts[-1].in_offset})"
            )
        if ctx.ctx_bits and ctx.in_offset == 0:
            raise BlobError(f"{here}: ctx_bits {ctx.ctx_bits} at gzip offset 0 (no previous byte)")
        end = ctx.dict_offset + ctx.dict_size
        if end > len(dictionaries):
            raise BlobError(f"{here}: dictionary {ctx.dict_offset}+{ctx.dict_size} is outside the table")
        contexts.append(ZranContext(**{**ctx.__dict__, "window": bytes(dictionaries[ctx.dict_offset : end])}))
        expected_dict_offset = end
    if expected_dict_offset != len(dictionaries):
        raise BlobError(
            f"{where}: dictionaries take {expected_dict_offset} bytes, the table leaves {len(dictionaries)}"
        )
    return contexts


def check_zran_chunk(
    ci_index: int, flags: int, data: int, size: int, contexts: Sequence[ZranContext], where: str
) -> None:
    """A CI v2 entry of a zran blob: COMPRESSED | ZRAN, inside the output of an existing context."""
    index, offset = zran_position(data)
    here = f"{where}: CI entry {ci_index}"
    if flags & ~CI_HAS_CRC32 != CI_COMPRESSED | CI_ZRAN:
        raise BlobError(f"{here}: flags {flags:#x}, a zran chunk has COMPRESSED | ZRAN (0x3)")
    if index >= len(contexts):
        raise BlobError(f"{here}: zran context {index}, but there are {len(contexts)}")
    if offset + size > contexts[index].out_len:
        raise BlobError(
            f"{here}: offset {offset} + size {size} is past the out_len "
            f"{contexts[index].out_len} of zran context {index}"
        )


# -- resuming a raw deflate stream at a bit offset, stdlib only ---------------------------------------


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, count: int) -> None:
        """`count` bits of `value`, least significant first (deflate header fields and extra bits)."""
        self.bits += [(value >> i) & 1 for i in range(count)]

    def to_bytes(self) -> bytes:
        assert len(self.bits) % 8 == 0
        return bytes(
            sum(bit << i for i, bit in enumerate(self.bits[at : at + 8]))
            for at in range(0, len(self.bits), 8)
        )


def _empty_fixed_block(out: _Bits) -> None:
    """BFINAL=0, BTYPE=01, end-of-block (fixed code 0000000): 10 bits."""
    out.put(0, 1)
    out.put(1, 2)
    out.put(0, 7)


def _empty_dynamic_block(out: _Bits) -> None:
    """BFINAL=0, BTYPE=10 with one-code trees (only symbol 256 and distance 0): 93 bits."""
    out.put(0, 1)
    out.put(2, 2)
    out.put(0, 5)  # HLIT: 257 literal/length codes
    out.put(0, 5)  # HDIST: 1 distance code
    out.put(15, 4)  # HCLEN: 19 code-length codes
    for symbol in (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15):
        out.put(1 if symbol in (1, 18) else 0, 3)
    # code-length alphabet: symbol 1 -> code 0, symbol 18 -> code 1 (one bit each)
    out.put(1, 1)
    out.put(127, 7)  # 138 zero lengths
    out.put(1, 1)
    out.put(107, 7)  # 118 zero lengths: literals 0..255 unused
    out.put(0, 1)  # literal 256 (end of block) has length 1
    out.put(0, 1)  # distance code 0 has length 1
    out.put(0, 1)  # the block's only symbol: end of block


def bit_prefix(ctx_byte: int, ctx_bits: int) -> bytes:
    """Whole bytes that leave a raw inflater exactly where the context's block starts, window untouched."""
    if not ctx_bits:
        return b""
    residue = (8 - ctx_bits) % 8
    out = _Bits()
    dynamic = residue in (5, 7, 1, 3)
    if dynamic:
        _empty_dynamic_block(out)
    fixed = {2: 1, 4: 2, 6: 3, 0: 0, 5: 0, 7: 1, 1: 2, 3: 3}[residue]
    for _ in range(fixed):
        _empty_fixed_block(out)
    out.put(ctx_byte >> (8 - ctx_bits), ctx_bits)
    return out.to_bytes()


def _skip_gzip_header(data: bytes, where: str) -> int:
    """Length of the gzip member header at the start of `data` (RFC 1952)."""
    if len(data) < 10 or data[:3] != b"\x1f\x8b\x08":
        raise BlobError(f"{where}: no gzip member header where the next member should start")
    flags, pos = data[3], 10
    if flags & 0x04:
        if len(data) < pos + 2:
            raise BlobError(f"{where}: truncated gzip extra field")
        pos += 2 + u16(data, pos)
    for bit in (0x08, 0x10):
        if flags & bit:
            end = data.find(b"\0", pos)
            if end < 0:
                raise BlobError(f"{where}: unterminated gzip header string")
            pos = end + 1
    if flags & 0x02:
        pos += 2
    if pos > len(data):
        raise BlobError(f"{where}: truncated gzip member header")
    return pos


def inflate_context(gzip_file: BinaryIO, ctx: ZranContext, where: str) -> bytes:
    """The `out_len` bytes the context yields, decoded from its gzip range alone (nydus-zran.md §8)."""
    gzip_file.seek(ctx.in_offset)
    data = gzip_file.read(ctx.in_len)
    if len(data) != ctx.in_len:
        raise BlobError(f"{where}: gzip range {ctx.in_offset}+{ctx.in_len} runs past the end of the layer")
    if ctx.ctx_bits:
        gzip_file.seek(ctx.in_offset - 1)
        if gzip_file.read(1) != bytes([ctx.ctx_byte]):
            raise BlobError(f"{where}: ctx_byte {ctx.ctx_byte:#04x} is not the gzip byte before in_offset")
    pending = bit_prefix(ctx.ctx_byte, ctx.ctx_bits) + data
    out = bytearray()
    window = ctx.window
    try:
        while len(out) < ctx.out_len:
            decoder = zlib.decompressobj(-15, zdict=window) if window else zlib.decompressobj(-15)
            out += decoder.decompress(pending, ctx.out_len - len(out))
            if len(out) >= ctx.out_len:
                break
            if not decoder.eof:
                raise BlobError(
                    f"{where}: the gzip range yields {len(out)} bytes, the context claims {ctx.out_len}"
                )
            # a gzip member ends inside the context: skip its 8-byte trailer and the next header
            rest = decoder.unused_data[8:]
            pending = rest[_skip_gzip_header(rest, where) :]
            window = b""
    except zlib.error as exc:
        raise BlobError(f"{where}: the gzip data does not inflate from this checkpoint ({exc})") from exc
    return bytes(out)


def zran_position(data: int) -> tuple[int, int]:
    """(context index, offset in the context's output) of a zran CI v2 data word."""
    return data >> 32, data & 0xFFFF_FFFF


class GzipLayer:
    """The gzip layer a zran blob refers to: its size, digest and context decoding with a small cache."""

    def __init__(self, path: Path, contexts: Sequence[ZranContext], where: str) -> None:
        self.path = path
        self.contexts = contexts
        self.where = where
        try:
            self.size = path.stat().st_size
        except OSError as exc:
            raise BlobError(f"{where}: cannot open the gzip layer ({exc.strerror})") from exc
        self._cached: tuple[int, bytes] | None = None

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as handle:
            while block := handle.read(_READ_SIZE):
                digest.update(block)
        return digest.hexdigest()

    def context_output(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        ctx = self.contexts[index]
        if ctx.in_offset + ctx.in_len > self.size:
            raise BlobError(
                f"{self.where}: zran context {index} range {ctx.in_offset}+{ctx.in_len} is past the "
                f"{self.size}-byte gzip layer"
            )
        with self.path.open("rb") as handle:
            output = inflate_context(handle, ctx, f"{self.where} zran context {index}")
        self._cached = (index, output)
        return output

    def check_contexts_against_stream(self) -> None:
        """Every context's output equals the straight decompression of the layer at its offsets."""
        pending = sorted(self.contexts, key=lambda c: c.out_offset)
        if not pending:
            return
        buffer = bytearray()
        base = 0  # uncompressed offset of buffer[0]
        for produced in _gunzip_stream(self.path, self.where):
            buffer += produced
            while pending and pending[0].out_offset + pending[0].out_len <= base + len(buffer):
                ctx = pending.pop(0)
                expected = bytes(buffer[ctx.out_offset - base : ctx.out_offset - base + ctx.out_len])
                if ctx.out_offset < base or self.context_output(ctx.index) != expected:
                    raise BlobError(
                        f"{self.where}: zran context {ctx.index} decodes to other bytes than the layer at "
                        f"uncompressed offset {ctx.out_offset}"
                    )
            keep_from = min(pending[0].out_offset, base + len(buffer)) if pending else base + len(buffer)
            if keep_from > base:
                del buffer[: keep_from - base]
                base = keep_from
        if pending:
            raise BlobError(
                f"{self.where}: zran context {pending[0].index} ends past the layer's uncompressed end "
                f"{base + len(buffer)}"
            )


def _gunzip_stream(path: Path, where: str) -> Iterator[bytes]:
    """The decompressed bytes of every member of a gzip file, piece by piece."""
    decoder = zlib.decompressobj(31)
    try:
        with path.open("rb") as handle:
            while block := handle.read(_READ_SIZE):
                while block:
                    yield decoder.decompress(block)
                    block = b""
                    if decoder.eof:
                        block, decoder = decoder.unused_data, zlib.decompressobj(31)
    except zlib.error as exc:
        raise BlobError(f"{where}: the gzip layer does not decompress ({exc})") from exc
