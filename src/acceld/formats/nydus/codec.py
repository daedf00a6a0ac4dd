"""Chunk compression and digests for the compressors and digesters Nydus supports."""

from __future__ import annotations

import hashlib
from typing import Any

import blake3
import lz4.block
import zstandard

from acceld.formats.driver import FormatError

COMPRESSORS = ("zstd", "lz4_block", "none")
DIGESTERS = ("blake3", "sha256")
ZSTD_LEVEL = 3


def chunk_digest(data: bytes | memoryview, digester: str) -> bytes:
    if digester == "blake3":
        digest: bytes = blake3.blake3(data).digest()
        return digest
    return hashlib.sha256(data).digest()


def make_compressor(compressor: str) -> Any:
    """A reusable compressor object; not thread-safe, create one per thread."""
    if compressor == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return None


def compress(data: bytes | bytearray, compressor: str, context: Any = None) -> bytes | None:
    """The compressed form of `data`, or None when compression does not make it smaller."""
    if compressor == "none":
        return None
    if compressor == "zstd":
        packed: bytes = (context or zstandard.ZstdCompressor(level=ZSTD_LEVEL)).compress(data)
    else:
        packed = lz4.block.compress(data, store_size=False)
    return packed if len(packed) < len(data) else None


def decompress(data: bytes, compressor: str, size: int) -> bytes:
    """Decompress one unit to exactly `size` bytes."""
    try:
        if compressor == "zstd":
            out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        elif compressor == "lz4_block":
            out = lz4.block.decompress(data, uncompressed_size=size)
        else:
            out = bytes(data)
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
        raise FormatError(f"corrupt {compressor} data: {exc}") from exc
    if len(out) != size:
        raise FormatError(f"{compressor} data decompressed to {len(out)} bytes, expected {size}")
    return out
