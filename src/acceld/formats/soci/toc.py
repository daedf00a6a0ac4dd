"""The zTOC's file table: every tar entry as Go's `archive/tar` reader reports it, with the offset
of its data in the uncompressed tar stream.

Names are kept as the headers spell them (PAX `path`, GNU long names and the USTAR prefix
applied, nothing normalised); `xattrs` carries every PAX record of the entry, as soci does. Entry
types soci cannot index (GNU sparse, PAX global headers, volume labels…) raise `SkipLayer`: the
layer is then pulled normally.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

from acceld.formats.driver import FormatError, SkipLayer
from acceld.formats.tarfields import checksum_ok, cstring, decode, parse_number, parse_pax_records

BLOCK = 512
_ZERO = bytes(BLOCK)
_TYPES = {"0": "reg", "\0": "reg", "7": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block",
          "5": "dir", "6": "fifo"}  # fmt: skip
_EXTENSIONS = ("x", "L", "K")
_MAX_EXTENSION = 1 << 20
_SKIP_PIECE = 1 << 20


class FileMetadata(NamedTuple):  # a tuple: built once per tar entry, cheaper than a frozen dataclass
    name: str
    type: str
    uncompressed_offset: int
    uncompressed_size: int
    linkname: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mod_time: str
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[str, str], ...] = ()


@dataclass
class TarToc:
    entries: list[FileMetadata] = field(default_factory=list)
    archive_size: int = 0  # the reader's position after the end-of-archive marker (or the end)


@functools.lru_cache(maxsize=4096)
def _utc_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_time(seconds: int, nanos: int = 0) -> str:
    """Go's `time.MarshalText` of a UTC time: RFC 3339, fractional seconds without trailing zeros."""
    stamp = _utc_seconds(seconds)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{stamp}{fraction}Z"


def _pax_time(value: str) -> tuple[int, int]:
    seconds, _, fraction = value.partition(".")
    try:
        return int(seconds), int((fraction + "000000000")[:9] or "0") if fraction else 0
    except ValueError:
        raise FormatError(f"bad tar: PAX time {value!r}") from None


class _Reader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.position = 0
        self._scratch: memoryview | None = None  # file data is skipped into it, never kept

    def read(self, size: int) -> bytes:
        data = self._source.read(size)
        while 0 < len(data) < size:
            more = self._source.read(size - len(data))
            if not more:
                break
            data += more
        self.position += len(data)
        return data

    def exact(self, size: int, what: str) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise FormatError(f"truncated tar: the stream ends inside {what} at byte {self.position}")
        return data

    def skip(self, size: int, what: str) -> None:
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_SKIP_PIECE))
        while size:
            n = self._source.readinto(self._scratch[: min(size, _SKIP_PIECE)])  # type: ignore[attr-defined]
            if not n:
                raise FormatError(f"truncated tar: the stream ends inside {what} at byte {self.position}")
            self.position += n
            size -= n


def read_toc(source: BinaryIO, on_entry: Callable[[FileMetadata], None] | None = None) -> TarToc:
    """Scan an uncompressed tar stream once (it is read to its end-of-archive marker). Entries go
    to `on_entry` as they are found, else into the result's `entries`."""
    reader = _Reader(source)
    toc = TarToc()
    add = on_entry or toc.entries.append
    pax: dict[str, bytes] = {}
    long_name = long_link = None
    while True:
        at = reader.position
        block = reader.read(BLOCK)
        if not block:
            break
        if len(block) != BLOCK:
            raise FormatError(f"truncated tar: partial header block at byte {at}")
        if block == _ZERO:
            reader.read(BLOCK)
            break
        if not checksum_ok(block):
            raise FormatError(f"bad tar: header checksum mismatch at byte {at}")
        typeflag = chr(block[156])
        size = parse_number(block[124:136], "size")
        if size < 0:
            raise FormatError(f"bad tar: negative size at byte {at}")
        if typeflag in _EXTENSIONS:
            if size > _MAX_EXTENSION:
                raise FormatError(f"bad tar: extension header of {size} bytes at byte {at}")
            payload = reader.exact(size + (-size % BLOCK), "an extension header")[:size]
            if typeflag == "x":
                pax.update(parse_pax_records(payload))
            elif typeflag == "L":
                long_name = decode(cstring(payload))
            else:
                long_link = decode(cstring(payload))
            continue
        if typeflag not in _TYPES:
            raise SkipLayer(f"tar entry type {typeflag!r} at byte {at} cannot be indexed")
        if any(key.startswith("GNU.sparse.") for key in pax):
            raise SkipLayer(f"sparse file at byte {at} cannot be indexed")
        entry = _entry(block, typeflag, size, reader.position, pax, long_name, long_link)
        add(entry)
        data_size = entry.uncompressed_size  # Go reads no data for header-only types, whatever the size field
        reader.skip(data_size + (-data_size % BLOCK), f"the data of {entry.name!r}")
        pax, long_name, long_link = {}, None, None
    toc.archive_size = reader.position
    return toc


def _entry(
    block: bytes,
    typeflag: str,
    size: int,
    data_offset: int,
    pax: dict[str, bytes],
    long_name: str | None,
    long_link: str | None,
) -> FileMetadata:
    name = decode(cstring(block[0:100]))
    linkname = decode(cstring(block[157:257]))
    uname = gname = ""
    devmajor = devminor = 0
    magic, version = block[257:263], block[263:265]
    if magic == b"ustar\0" or (magic == b"ustar " and version == b" \0"):
        uname, gname = decode(cstring(block[265:297])), decode(cstring(block[297:329]))
        if typeflag in ("3", "4"):
            devmajor = parse_number(block[329:337], "devmajor")
            devminor = parse_number(block[337:345], "devminor")
        if magic == b"ustar\0":
            prefix = cstring(block[345:500])
            if prefix:
                name = decode(prefix) + "/" + name
    uid, gid = parse_number(block[108:116], "uid"), parse_number(block[116:124], "gid")
    seconds, nanos = parse_number(block[136:148], "mtime"), 0
    text = {key: decode(value) for key, value in pax.items()}
    try:
        name = text.get("path") or long_name or name
        linkname = text.get("linkpath") or long_link or linkname
        uname = text.get("uname", uname)
        gname = text.get("gname", gname)
        uid = int(text.get("uid", uid))
        gid = int(text.get("gid", gid))
        size = int(text.get("size", size))
    except ValueError:
        raise FormatError(f"bad tar: PAX record of {name!r}") from None
    if "mtime" in text:
        seconds, nanos = _pax_time(text["mtime"])
    kind = _TYPES[typeflag]
    if typeflag == "\0" and name.endswith("/"):
        kind = "dir"
    return FileMetadata(
        name=name,
        type=kind,
        uncompressed_offset=data_offset,
        uncompressed_size=size if kind == "reg" else 0,
        linkname=linkname,
        mode=parse_number(block[100:108], "mode"),
        uid=uid,
        gid=gid,
        uname=uname,
        gname=gname,
        mod_time=format_time(seconds, nanos),
        devmajor=devmajor,
        devminor=devminor,
        xattrs=tuple(sorted(text.items())),
    )
