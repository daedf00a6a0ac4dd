"""Conversion options of the Nydus writer, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from acceld.formats.driver import FormatError
from acceld.formats.nydus.codec import COMPRESSORS, DIGESTERS
from acceld.formats.nydus.layout import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

DEFAULT_CHUNK_SIZE = 0x100000


@dataclass(frozen=True)
class NydusOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compressor: str = "zstd"
    digester: str = "blake3"
    prefetch_patterns: tuple[str, ...] = ("/",)

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size & (size - 1) or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
            raise FormatError(f"chunk size {size:#x} must be a power of two from 4 KiB to 16 MiB")
        if self.compressor not in COMPRESSORS:
            raise FormatError(
                f"unknown compressor {self.compressor!r} (choose from {', '.join(COMPRESSORS)})"
            )
        if self.digester not in DIGESTERS:
            raise FormatError(f"unknown digester {self.digester!r} (choose from {', '.join(DIGESTERS)})")
        for pattern in self.prefetch_patterns:
            if not pattern.startswith("/"):
                raise FormatError(f"prefetch pattern {pattern!r} must be an absolute path")
