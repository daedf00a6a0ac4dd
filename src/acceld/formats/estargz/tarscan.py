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
from dataclasses import dataclass, field
from typing import BinaryIO

from acceld.formats.driver import FormatError
from acceld.formats.tarfields import checksum_ok, cstring, decode, parse_number, parse_pax_records

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
TYPE_REG, TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO = "0123456"
SUPPORTED_TYPES = frozenset((TYPE_REG, TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO))
_TYPE_REG_OLD = "\0"
_TYPE_GNU_SPARSE = "S"
_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = "x", "g", "L", "K"
_MAX_SPECIAL_FILE = 1 << 20  # Go's limit for PAX and GNU long-name payloads
_XATTR_PREFIX = "SCHILY.xattr."
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


def _parse_pax_time(value: str) -> int:
    """PAX `sec[.frac]` as nanoseconds (fraction truncated to 9 digits, as Go does)."""
    sign = -1 if value.startswith("-") else 1
    seconds, _, fraction = value.lstrip("+-").partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise FormatError(f"bad tar header: PAX time {value!r}")
    nanos = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9] or "0")
    return sign * nanos


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


@dataclass(slots=True)
class _Pending:
    """Extension headers seen before the next real header."""

    start: int = -1
    pax: dict[str, bytes] = field(default_factory=dict)
    long_name: str | None = None
    long_link: str | None = None


@dataclass(slots=True)
class _Header:
    typeflag: str
    name: str
    linkname: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0


def _parse_header(block: bytes) -> _Header:
    magic, version = block[257:263], block[263:265]
    header = _Header(
        typeflag=chr(block[156]),
        name=decode(cstring(block[0:100])),
        linkname=decode(cstring(block[157:257])),
        size=parse_number(block[124:136], "size"),
        mode=parse_number(block[100:108], "mode"),
        uid=parse_number(block[108:116], "uid"),
        gid=parse_number(block[116:124], "gid"),
        mtime_ns=parse_number(block[136:148], "mtime") * 1_000_000_000,
    )
    is_ustar = magic == b"ustar\0"
    if is_ustar or (magic == b"ustar " and version == b" \0"):
        header.uname = decode(cstring(block[265:297]))
        header.gname = decode(cstring(block[297:329]))
        header.devmajor = parse_number(block[329:337], "devmajor")
        header.devminor = parse_number(block[337:345], "devminor")
    if is_ustar:
        prefix_end = 476 if block[508:512] == b"tar\0" else 500  # star keeps times after a shorter prefix
        prefix = cstring(block[345:prefix_end])
        if prefix:
            header.name = decode(prefix) + "/" + header.name
    return header


def _apply_pax(header: _Header, xattrs: dict[str, bytes], pax: dict[str, bytes]) -> None:
    for key, raw in pax.items():
        if key.startswith("GNU.sparse."):
            raise FormatError("unsupported tar: sparse files (GNU.sparse PAX records)")
        if key.startswith(_XATTR_PREFIX):
            xattrs[key[len(_XATTR_PREFIX) :]] = raw
            continue
        if not raw:
            continue  # an empty PAX value keeps the header's value
        value = decode(raw)
        try:
            if key == "path":
                header.name = value
            elif key == "linkpath":
                header.linkname = value
            elif key == "uname":
                header.uname = value
            elif key == "gname":
                header.gname = value
            elif key == "uid":
                header.uid = int(value)
            elif key == "gid":
                header.gid = int(value)
            elif key == "size":
                header.size = int(value)
            elif key == "mtime":
                header.mtime_ns = _parse_pax_time(value)
        except ValueError:
            raise FormatError(f"bad tar: PAX record {key}={value!r}") from None


def scan_tar(source: BinaryIO, spool: BinaryIO, chunk_size: int) -> Iterator[TarEntry]:
    """Copy `source` (an uncompressed tar) to `spool` and yield its entries in tar order."""
    reader = _Spooler(source, spool)
    links: set[str] = set()  # the names whose latest entry so far is a hardlink
    pending = _Pending()
    while True:
        block_start = reader.position
        block = reader.read(BLOCK)
        if not block:
            break  # Go accepts a tar that ends at a block boundary without the EOF marker
        if len(block) != BLOCK:
            raise FormatError(f"truncated tar: partial header block at byte {block_start}")
        if block == ZERO_BLOCK:
            following = reader.read(BLOCK)
            if following and following != ZERO_BLOCK:
                raise FormatError(f"bad tar: zero block followed by data at byte {block_start}")
            break
        if not checksum_ok(block):
            raise FormatError(f"bad tar: header checksum mismatch at byte {block_start}")
        header = _parse_header(block)
        if header.typeflag == _PAX_GLOBAL and pending.start < 0:
            _skip_global_header(reader, header.size, block_start)
            continue
        if pending.start < 0:
            pending.start = block_start
        if header.typeflag in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            _read_extension(reader, pending, header.typeflag, header.size, block_start)
            continue
        entry = _finish_entry(reader, pending, header, chunk_size)
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
        pending = _Pending()
    if pending.start >= 0:
        raise FormatError("truncated tar: extension header without a following entry")


def _skip_global_header(reader: _Spooler, size: int, at: int) -> None:
    """Drop a PAX global header that only carries a comment, as `git archive` writes (runtimes ignore
    global headers); one that sets file attributes for every later entry cannot be kept per entry."""
    if not 0 <= size <= _MAX_SPECIAL_FILE:
        raise FormatError(f"bad tar: extension header of {size} bytes at byte {at}")
    payload = reader.read_exact(size + (-size % BLOCK), "an extension header")[:size]
    if set(parse_pax_records(payload)) - {"comment"}:
        raise FormatError(f"unsupported tar: PAX global header with file attributes at byte {at}")


def _clean(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _read_extension(reader: _Spooler, pending: _Pending, typeflag: str, size: int, at: int) -> None:
    if typeflag == _PAX_GLOBAL:
        raise FormatError(f"unsupported tar entry type 'g' (PAX global header) at byte {at}")
    if not 0 <= size <= _MAX_SPECIAL_FILE:
        raise FormatError(f"bad tar: extension header of {size} bytes at byte {at}")
    payload = reader.read_exact(size + (-size % BLOCK), "an extension header")[:size]
    if typeflag == _PAX_LOCAL:
        pending.pax.update(parse_pax_records(payload))
    elif typeflag == _GNU_LONGNAME:
        pending.long_name = decode(cstring(payload))
    else:
        pending.long_link = decode(cstring(payload))


def _finish_entry(reader: _Spooler, pending: _Pending, header: _Header, chunk_size: int) -> TarEntry:
    xattrs: dict[str, bytes] = {}
    _apply_pax(header, xattrs, pending.pax)
    if pending.long_name:
        header.name = pending.long_name
    if pending.long_link:
        header.linkname = pending.long_link
    typeflag = header.typeflag
    if typeflag == _TYPE_REG_OLD:
        typeflag = TYPE_DIR if header.name.endswith("/") else TYPE_REG
    if typeflag == _TYPE_GNU_SPARSE:
        raise FormatError(f"unsupported tar: sparse file {header.name!r} (GNU 'S' entry)")
    if typeflag not in SUPPORTED_TYPES:
        raise FormatError(f"unsupported tar entry type {typeflag!r} for {header.name!r}")
    if header.size < 0:
        raise FormatError(f"bad tar: negative size for {header.name!r}")
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
        xattrs=xattrs or None,
        header_offset=pending.start,
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
