"""Read parts of a finished Nydus blob through its TOC (§4.3): image.boot and blob.meta."""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path
from typing import IO

import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.nydus.codec import decompress
from acceld.formats.nydus.layout import (
    BLOB_META_HEADER_SIZE,
    BLOCK,
    TAR_BLOCK,
    TOC_ENTRY_SIZE,
    TocEntry,
    align,
)


def read_toc(handle: IO[bytes], size: int) -> dict[str, TocEntry]:
    if size < TAR_BLOCK:
        raise FormatError("nydus blob too small for a TOC")
    handle.seek(size - TAR_BLOCK)
    header = handle.read(TAR_BLOCK)
    if header[:14] != b"rafs.blob.toc\0":
        raise FormatError("nydus blob does not end with a rafs.blob.toc tar header")
    try:
        toc_size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
    except ValueError as exc:
        raise FormatError("nydus blob TOC header has a bad size field") from exc
    if toc_size % TOC_ENTRY_SIZE or toc_size > size - TAR_BLOCK:
        raise FormatError(f"nydus blob TOC size {toc_size} is invalid")
    handle.seek(size - TAR_BLOCK - toc_size)
    raw = handle.read(toc_size)
    try:
        entries = [TocEntry.unpack(raw[i : i + TOC_ENTRY_SIZE]) for i in range(0, toc_size, TOC_ENTRY_SIZE)]
    except ValueError as exc:
        raise FormatError(f"nydus blob TOC: {exc}") from exc
    return {entry.name: entry for entry in entries}


def read_toc_digest(path: Path) -> tuple[bytes, int]:
    """sha256 of a blob's TOC entries (without their tar header, as nydus-snapshotter computes a ref
    blob's `blob_toc_digest`) and the TOC's size with its header."""
    with path.open("rb") as handle:
        size = path.stat().st_size
        toc = read_toc(handle, size)
        length = TOC_ENTRY_SIZE * len(toc)
        handle.seek(size - TAR_BLOCK - length)
        return hashlib.sha256(handle.read(length)).digest(), length + TAR_BLOCK


def read_entry(handle: IO[bytes], entry: TocEntry) -> bytes:
    """The uncompressed data of one TOC entry."""
    handle.seek(entry.offset)
    data = handle.read(entry.compressed_size)
    if len(data) != entry.compressed_size:
        raise FormatError(f"nydus blob entry {entry.name} lies outside the blob")
    return decompress(data, entry.compressor, entry.uncompressed_size)


def open_blob_bootstrap(path: Path, workdir: Path, in_memory: int) -> IO[bytes]:
    """The per-layer bootstrap (`image.boot`) stored inside a Nydus blob, as a file the caller
    closes: in memory when it is at most `in_memory` bytes, else a temp file in `workdir` (a
    bootstrap can be larger than the memory it loads into)."""
    with path.open("rb") as handle:
        toc = read_toc(handle, path.stat().st_size)
        if "image.boot" not in toc:
            raise FormatError(f"{path.name}: nydus blob has no image.boot")
        entry = toc["image.boot"]
        if entry.uncompressed_size <= in_memory:
            return io.BytesIO(read_entry(handle, entry))
        boot = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - the caller closes it
        try:
            _extract(handle, entry, boot, path.name)
        except BaseException:
            boot.close()
            raise
        return boot


def _extract(handle: IO[bytes], entry: TocEntry, out: IO[bytes], name: str) -> None:
    """Stream one TOC entry's uncompressed data (zstd or stored) to `out`."""
    if entry.compressor == "zstd":
        handle.seek(entry.offset)
        limited = io.BufferedReader(_Limited(handle, entry.compressed_size))
        try:
            with zstandard.ZstdDecompressor().stream_reader(limited, read_across_frames=False) as reader:
                written = _copy(reader, out)
        except zstandard.ZstdError as exc:
            raise FormatError(f"{name}: corrupt zstd {entry.name}: {exc}") from exc
    else:
        data = read_entry(handle, entry)
        out.write(data)
        written = len(data)
    if written != entry.uncompressed_size:
        raise FormatError(f"{name}: {entry.name} is {written} bytes, the TOC says {entry.uncompressed_size}")


def write_blob_meta_file(path: Path, target: Path) -> bool:
    """Write the `<hex>.blob.meta` cache-file form of a blob's meta (§3) to `target`, streaming:
    the uncompressed CI data (zran tables included) padded to 4 KiB, then the header. False when
    the blob carries no chunk data."""
    with path.open("rb") as handle:
        toc = read_toc(handle, path.stat().st_size)
        if "blob.meta" not in toc or "blob.meta.header" not in toc:
            return False
        header = read_entry(handle, toc["blob.meta.header"])
        if len(header) != BLOB_META_HEADER_SIZE:
            raise FormatError(f"{path.name}: blob-meta header is not 4096 bytes")
        entry = toc["blob.meta"]
        with target.open("wb") as out:
            _extract(handle, entry, out, path.name)
            written = entry.uncompressed_size
            out.write(bytes(align(written, BLOCK) - written))
            out.write(header)
    return True


class _Limited(io.RawIOBase):
    """The next `size` bytes of a file."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle = handle
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.handle.read(min(len(buffer), self.left))
        self.left -= len(data)
        memoryview(buffer)[: len(data)] = data
        return len(data)


def _copy(source: IO[bytes], out: IO[bytes]) -> int:
    copied = 0
    while block := source.read(1 << 20):
        out.write(block)
        copied += len(block)
    return copied
