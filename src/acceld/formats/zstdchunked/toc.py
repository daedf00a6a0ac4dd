"""TOC entries of the containers/storage zstd:chunked manifest and their JSON form."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.zstdchunked import gojson
from acceld.formats.zstdchunked.spool import create_spool
from acceld.formats.zstdchunked.tarheaders import GoTime, TarHeader

TOC_VERSION = 1
_COMPRESS_IN_ONE_PIECE = 16 << 20
_READ_BLOCK = 4 << 20
CHUNK_TYPE_ZEROS = "zeros"

_TYPES = {
    "0": "reg",
    "1": "hardlink",
    "2": "symlink",
    "3": "char",
    "4": "block",
    "5": "dir",
    "6": "fifo",
}
_QUOTED_TYPES = {kind: f'"type":"{kind}"' for kind in (*_TYPES.values(), "chunk")}


@dataclass(slots=True)
class TocEntry:
    """One TOC entry; attributes mirror minimal.FileMetadata, zero values are omitted in JSON."""

    type: str
    name: str
    linkname: str = ""
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    modtime: GoTime | None = None
    accesstime: GoTime | None = None
    changetime: GoTime | None = None
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""

    @classmethod
    def from_header(cls, header: TarHeader) -> TocEntry:
        kind = _TYPES.get(header.typeflag)
        if kind is None:
            raise FormatError(
                f"tar entry {header.name!r} has type {header.typeflag!r}, which zstd:chunked cannot represent"
            )
        if not header.name.isascii() or not header.linkname.isascii():
            for what, text in (("name", header.name), ("link target", header.linkname)):
                if not _is_utf8(text):
                    # JSON turns the bytes into U+FFFD, and containers/storage then refuses the layer
                    # because its TOC no longer matches the tar-split
                    raise FormatError(
                        f"tar entry {header.name!r}: the {what} is not valid UTF-8, "
                        "which a zstd:chunked TOC cannot hold"
                    )
        return cls(
            type=kind,
            name=header.name,
            linkname=header.linkname,
            mode=header.mode,
            size=header.size,
            uid=header.uid,
            gid=header.gid,
            modtime=header.mtime,
            accesstime=header.atime,
            changetime=header.ctime,
            devmajor=header.devmajor,
            devminor=header.devminor,
            xattrs=header.xattrs,
        )

    def to_json(self) -> str:
        # straight-line: this runs once per entry and chunk of a layer
        parts = [_QUOTED_TYPES.get(self.type) or f'"type":{gojson.string(self.type)}']
        parts.append(f'"name":{gojson.string(self.name)}')
        if self.linkname:
            parts.append(f'"linkName":{gojson.string(self.linkname)}')
        if self.mode:
            parts.append(f'"mode":{self.mode}')
        if self.size:
            parts.append(f'"size":{self.size}')
        if self.uid:
            parts.append(f'"uid":{self.uid}')
        if self.gid:
            parts.append(f'"gid":{self.gid}')
        if self.modtime is not None:
            parts.append(f'"modtime":{gojson.time(self.modtime)}')
        if self.accesstime is not None:
            parts.append(f'"accesstime":{gojson.time(self.accesstime)}')
        if self.changetime is not None:
            parts.append(f'"changetime":{gojson.time(self.changetime)}')
        if self.devmajor:
            parts.append(f'"devMajor":{self.devmajor}')
        if self.devminor:
            parts.append(f'"devMinor":{self.devminor}')
        if self.xattrs:
            items = ",".join(
                f"{gojson.string(name)}:{gojson.b64(value)}" for name, value in sorted(self.xattrs.items())
            )
            parts.append(f'"xattrs":{{{items}}}')
        if self.digest:
            parts.append(f'"digest":{gojson.string(self.digest)}')
        if self.offset:
            parts.append(f'"offset":{self.offset}')
        if self.end_offset:
            parts.append(f'"endOffset":{self.end_offset}')
        if self.chunk_size:
            parts.append(f'"chunkSize":{self.chunk_size}')
        if self.chunk_offset:
            parts.append(f'"chunkOffset":{self.chunk_offset}')
        if self.chunk_digest:
            parts.append(f'"chunkDigest":{gojson.string(self.chunk_digest)}')
        if self.chunk_type:
            parts.append(f'"chunkType":{gojson.string(self.chunk_type)}')
        return "{" + ",".join(parts) + "}"


@dataclass(frozen=True)
class CompressedToc:
    path: Path
    size: int
    digest: str


class TocWriter:
    """Writes the TOC document (version, entries in tar order, tarSplitDigest) to a spool file,
    entry by entry, so that no layer's TOC is held in memory; spool files go on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._compressed_path = path.with_name(path.name + ".zst")
        self._file = create_spool(path)
        self.size = 0
        self._separator = b""
        self._write(f'{{"version":{TOC_VERSION},"entries":['.encode())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
        self._compressed_path.unlink(missing_ok=True)

    def add(self, entry: TocEntry) -> None:
        self._write(self._separator + entry.to_json().encode())
        self._separator = b","

    def finish(self, tar_split_digest: str) -> None:
        self._write(f'],"tarSplitDigest":{gojson.string(tar_split_digest)}}}'.encode())
        self._file.close()

    def compress(self, level: int) -> CompressedToc:
        """The finished TOC in one zstd frame in a spool file: a small TOC compressed in one piece
        (as it always was), a larger one streamed with its size pledged (so the frame header
        still carries it)."""
        compressor = zstandard.ZstdCompressor(level=level)
        digest = hashlib.sha256()
        written = 0
        with self.path.open("rb") as plain, create_spool(self._compressed_path) as spool:

            def emit(data: bytes) -> None:
                nonlocal written
                spool.write(data)
                digest.update(data)
                written += len(data)

            if self.size <= _COMPRESS_IN_ONE_PIECE:
                emit(compressor.compress(plain.read()))
            else:
                stream = compressor.compressobj(size=self.size)
                while block := plain.read(_READ_BLOCK):
                    emit(stream.compress(block))
                emit(stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        return CompressedToc(self._compressed_path, written, "sha256:" + digest.hexdigest())

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)


def _is_utf8(text: str) -> bool:
    """Whether a tar string (raw bytes kept as surrogate escapes) is valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
