"""First pass of the writer: copy the layer tar to a spool file and index its entries.

Headers are interpreted the way Go's `archive/tar` reader does (the reference writer builds its
TOC from that view): PAX `x` records and GNU `L`/`K` long names apply to the next header, the
USTAR prefix is joined to the name, type `\\0` becomes a regular file (a directory when the name
ends in `/`), numbers may be octal or base-256. Each entry remembers where its raw header blocks
and its payload sit in the spool, so the writer can copy them unchanged, and the sha256 of the
whole payload and of every chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from acceld.formats.driver import FormatError
from acceld.formats.targuard import TarGuard
from acceld.formats.tarreader import BLOCK, TYPE_LINK, TYPE_REG, Header, HeaderReader

SUPPORTED_TYPES = frozenset("0123456")  # regular, hardlink, symlink, char, block, directory, FIFO
_COPY_PIECE = 1 << 20


@dataclass(slots=True)
class TarEntry:
    """One file of the layer with its header values as Go's tar reader reports them."""

    name: str
    typeflag: str
    linkname: str
    size: int  # payload bytes in the tar (0 for types without payload)
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime_ns: int
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] | None
    header_offset: int  # first header block in the spool, extension headers included
    data_offset: int  # payload start in the spool
    digest: bytes = b""  # sha256 of the payload (regular files only)
    chunk_digests: list[bytes] | None = None  # sha256 of each chunk, only for files of several chunks

    def chunk_digest(self, number: int) -> bytes:
        return self.chunk_digests[number] if self.chunk_digests else self.digest


class _Spooler:
    """Reads the input, writes every byte read to the spool, and counts the position."""

    def __init__(self, source: BinaryIO, spool: BinaryIO) -> None:
        self.source = source
        self.spool = spool
        self.position = 0

    def read(self, size: int) -> bytes:
        data = self.source.read(size)
        while len(data) < size:
            more = self.source.read(size - len(data))
            if not more:
                break
            data += more
        self.spool.write(data)
        self.position += len(data)
        return data

    def read_exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise FormatError(f"truncated tar: stream ends inside {what} at byte {self.position}")
        return data


def scan_tar(
    source: BinaryIO, spool: BinaryIO, chunk_size: int, guard: TarGuard | None = None
) -> Iterator[TarEntry]:
    """Copy `source` (an uncompressed tar) to `spool` and yield its entries in tar order (`guard`,
    the TarGuard watching `source`, is handed every header)."""
    reader = _Spooler(source, spool)
    headers = HeaderReader(reader, sparse=False, strict_globals=True, guard=guard)
    links: set[str] = set()  # the names whose latest entry so far is a hardlink
    while (header := headers.next()) is not None:
        entry = _entry(reader, header, chunk_size)
        if entry.typeflag == TYPE_LINK:
            if _clean(entry.linkname) in links:
                # readers look the target up among the TOC's files (the reference verifier follows no chains)
                raise FormatError(
                    f"hardlink {entry.name!r} points to {entry.linkname!r}, itself a hardlink: "
                    "eStargz needs every hardlink to name the file it shares"
                )
            links.add(_clean(entry.name))
        elif links:
            links.discard(_clean(entry.name))
        yield entry


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _entry(reader: _Spooler, header: Header, chunk_size: int) -> TarEntry:
    typeflag = header.typeflag
    if typeflag not in SUPPORTED_TYPES:
        raise FormatError(f"unsupported tar entry type {typeflag!r} for {header.name!r}")
    entry = TarEntry(
        name=header.name,
        typeflag=typeflag,
        linkname=header.linkname,
        size=header.size if typeflag == TYPE_REG else 0,
        mode=header.mode,
        uid=header.uid,
        gid=header.gid,
        uname=header.uname,
        gname=header.gname,
        mtime_ns=header.mtime_ns,
        devmajor=header.devmajor,
        devminor=header.devminor,
        xattrs=header.xattrs,
        header_offset=header.start,
        data_offset=reader.position,
    )
    if typeflag == TYPE_REG:
        _copy_payload(reader, entry, chunk_size)
    return entry


def _copy_payload(reader: _Spooler, entry: TarEntry, chunk_size: int) -> None:
    whole = hashlib.sha256()
    chunked = entry.size > chunk_size
    if chunked:
        entry.chunk_digests = []
    copied = 0
    while copied < entry.size:
        chunk_hash = hashlib.sha256()
        chunk_end = min(copied + chunk_size, entry.size)
        while copied < chunk_end:
            piece = reader.read(min(_COPY_PIECE, chunk_end - copied))
            if not piece:
                raise FormatError(
                    f"truncated tar: {entry.name!r} needs {entry.size} bytes, stream ends after {copied}"
                )
            whole.update(piece)
            if chunked:
                chunk_hash.update(piece)
            copied += len(piece)
        if entry.chunk_digests is not None:
            entry.chunk_digests.append(chunk_hash.digest())
    entry.digest = whole.digest()
    padding = -entry.size % BLOCK
    if padding:
        reader.read_exact(padding, f"the padding of {entry.name!r}")
