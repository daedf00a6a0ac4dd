"""tar-split checks: its headers against the TOC, and its segments and CRCs against the stream.

Headers kept in tar-split segments are parsed with Python's tarfile, independently of the
writer; comparisons follow containers/storage's ensureTOCMatchesTarSplit (a Unix-zero time
counts as no time).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import io
import re
import tarfile
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any

import fastcrc

from acceld.formats.fstree import tarinfo_xattrs
from acceld.formats.zstdchunked.errors import invalid

TAR_TYPES = {
    "reg": tarfile.REGTYPE,
    "hardlink": tarfile.LNKTYPE,
    "symlink": tarfile.SYMTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "dir": tarfile.DIRTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\Z")
_HEADER_ONLY = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE)


def parse_toc_time(value: str) -> tuple[int, int]:
    """An RFC 3339 timestamp as (Unix seconds, nanoseconds)."""
    match = _RFC3339.match(value)
    if not match:
        raise invalid(f"bad TOC timestamp {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    nsec = int((match.group(7) or "0")[:9].ljust(9, "0"))
    zone = match.group(8)
    offset = (
        0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    )
    return calendar.timegm((year, month, day, hour, minute, second)) - offset, nsec


def tar_split_headers(lines: Iterable[Mapping[str, Any]]) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """Each tar header stored in the tar-split, parsed by Python's tarfile, with its last block."""
    padding = 0
    for line in lines:
        if line.get("type") == 1:
            continue
        if line.get("type") != 2:
            raise invalid(f"unexpected tar-split entry type {line.get('type')!r}")
        payload = base64.b64decode(line.get("payload") or "")
        if len(payload) < padding:
            raise invalid("tar-split segment shorter than the previous file's padding")
        payload = payload[padding:]
        padding = 0
        if not payload.strip(b"\0"):
            continue  # end-of-archive blocks or trailing zeros
        try:
            with tarfile.open(fileobj=io.BytesIO(payload + bytes(1024)), mode="r:") as archive:
                info = archive.next()
        except tarfile.TarError as exc:
            raise invalid(f"tar-split segment is not a tar header: {exc}") from None
        if info is None:
            raise invalid("tar-split segment holds no tar header")
        yield info, payload[-512:]
        if info.type not in _HEADER_ONLY:
            padding = -info.size % 512


class TarSplitAssembler:
    """Checks the decompressed stream against tar-split segments and file CRC-64s, in order."""

    def __init__(self, lines: Iterable[dict[str, Any]], content_at: Callable[[str, int], None]) -> None:
        """`content_at(name, position)` hears where each file's content starts in the stream."""
        self._lines = iter(lines)
        self._content_at = content_at
        self._segment = b""  # rest of the current segment still to match
        self._file_left = 0
        self._file_crc: int | None = None
        self._expected_crc = b""
        self._file_name = ""
        self.position = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._segment:
                step = min(len(self._segment), len(view))
                if view[:step] != self._segment[:step]:
                    raise invalid(f"stream differs from the tar-split segment at byte {self.position}")
                self._segment = self._segment[step:]
            elif self._file_left:
                step = min(self._file_left, len(view))
                self._file_crc = fastcrc.crc64.go_iso(bytes(view[:step]), self._file_crc)
                self._file_left -= step
                if not self._file_left:
                    self._end_file()
            else:
                self._next_line(required=True)
                continue
            view = view[step:]
            self.position += step

    def _next_line(self, required: bool) -> bool:
        line = next(self._lines, None)
        if line is None:
            if required:
                raise invalid(f"stream continues after the tar-split ends (byte {self.position})")
            return False
        if line.get("type") == 2:
            self._segment = base64.b64decode(line.get("payload") or "")
        elif line.get("type") == 1:
            self._file_name = _tar_split_name(line)
            self._content_at(self._file_name, self.position)
            self._file_left = line.get("size", 0)
            self._file_crc = None
            self._expected_crc = base64.b64decode(line["payload"]) if line.get("payload") else b""
            if not self._file_left:
                self._end_file()
        else:
            raise invalid(f"unexpected tar-split entry type {line.get('type')!r}")
        return True

    def _end_file(self) -> None:
        if self._file_crc is not None and self._file_crc.to_bytes(8, "big") != self._expected_crc:
            raise invalid(f"{self._file_name}: content does not match the tar-split CRC-64")

    def finish(self) -> None:
        if self._segment or self._file_left:
            raise invalid("stream ends inside a tar-split entry")
        while self._next_line(required=False):
            if self._segment or self._file_left:
                raise invalid("tar-split describes more bytes than the stream holds")


def _tar_split_name(line: dict[str, Any]) -> str:
    if "name_raw" in line:
        return base64.b64decode(line["name_raw"]).decode("utf-8", "surrogateescape")
    name = line.get("name", "")
    return name if isinstance(name, str) else ""


def toc_name(info: tarfile.TarInfo, pending: Container[str]) -> str:
    """tarfile drops a directory's trailing slashes; find the TOC's spelling of the name."""
    if info.name in pending or not info.isdir():
        return info.name
    return next((n for n in (info.name + "/", info.name + "//") if n in pending), info.name)


def _pax_time(value: str) -> tuple[int, int]:
    seconds, _, fraction = value.partition(".")
    sec = int(seconds)
    nsec = int(fraction[:9].ljust(9, "0")) if fraction else 0
    total = sec * 1_000_000_000 + (-nsec if seconds.startswith("-") else nsec)
    return total // 1_000_000_000, total % 1_000_000_000


def _tar_time(info: tarfile.TarInfo, block: bytes, key: str) -> tuple[int, int] | None:
    """A header time as Go's tar reader sees it: PAX record, else USTAR mtime / GNU atime, ctime."""
    if info.pax_headers.get(key):
        stamp: tuple[int, int] | None = _pax_time(info.pax_headers[key])
    elif key == "mtime":
        stamp = (int(info.mtime), 0)
    elif block[257:265] == b"ustar  \0" and block[345 if key == "atime" else 357]:
        field = block[345:357] if key == "atime" else block[357:369]
        stamp = (int(field.strip(b" \0") or b"0", 8), 0)
    else:
        stamp = None
    return None if stamp == (0, 0) else stamp


def toc_time(entry: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    stamp = parse_toc_time(entry[key]) if entry.get(key) else None
    return None if stamp in ((0, 0), (-62135596800, 0)) else stamp  # Unix 0 and Go's zero time


def compare_entry(
    entry: Mapping[str, Any], info: tarfile.TarInfo, block: bytes
) -> Iterator[tuple[str, Any, Any]]:
    tar_type = tarfile.REGTYPE if info.type == tarfile.AREGTYPE else info.type
    yield "type", TAR_TYPES.get(entry["type"]), tar_type
    yield "linkName", entry.get("linkName", ""), info.linkname
    yield "mode", entry.get("mode", 0), info.mode
    yield "size", entry.get("size", 0), info.size
    yield "uid", entry.get("uid", 0), info.uid
    yield "gid", entry.get("gid", 0), info.gid
    yield "modtime", toc_time(entry, "modtime"), _tar_time(info, block, "mtime")
    yield "accesstime", toc_time(entry, "accesstime"), _tar_time(info, block, "atime")
    yield "changetime", toc_time(entry, "changetime"), _tar_time(info, block, "ctime")
    yield "devMajor", entry.get("devMajor", 0), info.devmajor
    yield "devMinor", entry.get("devMinor", 0), info.devminor
    try:
        xattrs = {k: base64.b64decode(v, validate=True) for k, v in entry.get("xattrs", {}).items()}
    except (binascii.Error, AttributeError):
        xattrs = {"<undecodable>": b""}
    yield "xattrs", xattrs, tarinfo_xattrs(info)
