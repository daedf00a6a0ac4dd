"""Streaming tar header reader with the semantics of Go's archive/tar.

zstd:chunked readers (containers/storage) re-parse the tar headers kept in the tar-split with
Go's tar reader and compare them with the TOC, so the TOC must be derived the same way:
PAX records override USTAR fields, GNU long names/links apply to the next header, the USTAR
prefix is joined with "/", old-style regular files ending in "/" are directories.

The reader also hands back every byte that is not file content ("raw" bytes: the padding of
the previous file, extension headers and the header itself) so that the caller can reproduce
the source tar byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from acceld.formats.driver import FormatError
from acceld.formats.tarfields import (
    checksum_ok,
    cstring,
    decode,
    parse_number,
    parse_pax_records,
    parse_repeated_number,
)
from acceld.formats.targuard import TarGuard, taking_headers

BLOCK = 512
_MAX_SPECIAL_FILE = 1 << 20  # Go's maxSpecialFileSize for PAX and GNU long name records
_HEADER_ONLY_TYPES = frozenset(b"12345")  # hardlink, symlink, char, block, dir: no payload
_ZERO_BLOCK = bytes(BLOCK)


class GoTime(NamedTuple):
    """A Go time.Time as a Unix timestamp (seconds and nanoseconds, 0 <= nsec < 1e9)."""

    sec: int
    nsec: int = 0


@dataclass(slots=True)
class TarHeader:
    """One tar entry as Go's tar.Reader reports it."""

    typeflag: str
    name: str
    linkname: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: GoTime
    atime: GoTime | None
    ctime: GoTime | None
    devmajor: int
    devminor: int
    pax_records: dict[str, str] = field(default_factory=dict)

    @property
    def payload_size(self) -> int:
        """Bytes of file content that follow the header in the stream."""
        return 0 if ord(self.typeflag) in _HEADER_ONLY_TYPES else self.size

    @property
    def xattrs(self) -> dict[str, bytes]:
        prefix = "SCHILY.xattr."
        return {
            key[len(prefix) :]: value.encode("utf-8", "surrogateescape")
            for key, value in self.pax_records.items()
            if key.startswith(prefix)
        }


def _cstring(raw: bytes) -> str:
    return raw.partition(b"\0")[0].decode("utf-8", "surrogateescape")


def _pax_time(text: str) -> GoTime:
    seconds, _, fraction = text.partition(".")
    try:
        sec = int(seconds, 10)
    except ValueError:
        raise FormatError(f"invalid PAX time {text!r}") from None
    if not fraction:
        return GoTime(sec)
    if not fraction.isdigit() or not fraction.isascii():
        raise FormatError(f"invalid PAX time {text!r}")
    nsec = int(fraction[:9].ljust(9, "0"))
    if seconds.startswith("-"):
        nsec = -nsec
    total = sec * 1_000_000_000 + nsec
    return GoTime(total // 1_000_000_000, total % 1_000_000_000)


def _decode_pax(records: dict[str, bytes]) -> dict[str, str]:
    decoded = {}
    for key, value in records.items():
        if key.startswith("GNU.sparse."):
            raise FormatError("sparse tar entries are not supported")
        decoded[key] = decode(value)
    return decoded


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class TarHeaderReader:
    """Reads a tar stream header by header; the caller reads each payload in between.

    `guard`: the TarGuard watching the bytes of `stream`, given before anything was read from it;
    it is handed every header as it is read (`TarGuard.take_headers`) instead of parsing them a
    second time, so the caller must read the headers up to the end of the archive.
    """

    def __init__(self, stream: Readable, guard: TarGuard | None = None) -> None:
        self._stream = stream
        self._guard = taking_headers(guard)
        self._pending_padding = 0
        self._remaining_payload = 0
        self.position = 0  # bytes consumed from the stream

    def _read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) < size:
            while len(data) < size and (more := self._stream.read(size - len(data))):
                data += more
        self.position += len(data)
        return data

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise FormatError(f"tar stream truncated in {what}")
        return data

    def read_payload(self, size: int) -> bytes:
        """Read up to `size` bytes of the current entry's content."""
        size = min(size, self._remaining_payload)
        data = self._read_exact(size, "file content")
        self._remaining_payload -= size
        return data

    def next(self, raw: bytearray) -> TarHeader | None:
        """Advance to the next entry; append every non-content byte consumed to `raw`.

        Returns None at the end-of-archive marker (or at a clean end of stream).
        """
        if self._remaining_payload:
            raise FormatError("tar payload not fully consumed")
        padding = self._pending_padding
        self._pending_padding = 0
        guard = self._guard
        pax_records: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._read(padding + BLOCK)  # the previous payload's padding, then a header
            raw += block
            if padding:
                if len(block) < padding:
                    raise FormatError("tar stream truncated in padding")
                block = block[padding:]
                padding = 0
            if not block:
                return self._end_of_archive()
            if len(block) != BLOCK:
                raise FormatError("tar stream truncated in a header")
            if block == _ZERO_BLOCK:
                second = self._read(BLOCK)
                raw += second
                if not second or second == _ZERO_BLOCK:
                    return self._end_of_archive()
                raise FormatError("invalid tar header after a zero block")
            if not checksum_ok(block):
                raise FormatError("invalid tar header checksum (not a tar stream?)")
            typeflag = chr(block[156])
            if typeflag in "xgLK":
                size = parse_number(block[124:136], "size")
                if guard is not None:
                    guard.extension_header(block[156], size)
                if size > _MAX_SPECIAL_FILE or size < 0:
                    raise FormatError("tar extension header too large")
                data = self._read(size + -size % BLOCK)
                raw += data
                if len(data) < size:
                    raise FormatError("tar stream truncated in extension header")
                if len(data) != size + -size % BLOCK:
                    raise FormatError("tar stream truncated in padding")
                data = data[:size]
                if typeflag == "x":
                    pax_records = parse_pax_records(data)
                elif typeflag == "g":
                    raise FormatError("PAX global headers are not supported by zstd:chunked")
                elif typeflag == "L":
                    long_name = cstring(data)
                else:
                    long_link = cstring(data)
                continue
            if guard is not None:
                guard.entry_header(block, pax_records, long_name, long_link)  # its verdict comes first
            header = self._parse(block, _decode_pax(pax_records) if pax_records else {})
            if long_name:
                header.name = decode(long_name)
            if long_link:
                header.linkname = decode(long_link)
            if header.typeflag == "\0":
                header.typeflag = "5" if header.name.endswith("/") else "0"
            if header.typeflag == "S":
                raise FormatError("sparse tar entries are not supported")
            if header.size < 0:
                raise FormatError(f"negative size in tar header for {header.name!r}")
            payload = header.payload_size
            self._remaining_payload = payload
            self._pending_padding = -payload % BLOCK
            return header

    def _end_of_archive(self) -> TarHeader | None:
        """What `next` returns at the end (None), once the guard is told."""
        if self._guard is not None:
            self._guard.end_of_archive()
        return None

    @staticmethod
    def _parse(block: bytes, pax: dict[str, str]) -> TarHeader:
        magic, version = block[257:263], block[263:265]
        is_ustar = magic == b"ustar\0" and version == b"00"
        is_gnu = magic == b"ustar " and version == b" \0"
        is_star = is_ustar and block[508:512] == b"tar\0"
        name = _cstring(block[0:100])
        atime: GoTime | None = None
        ctime: GoTime | None = None
        devmajor = devminor = 0
        if is_ustar or is_gnu:
            devmajor = parse_repeated_number(block[329:337], "devmajor")
            devminor = parse_repeated_number(block[337:345], "devminor")
        prefix = ""
        if is_star:
            prefix = _cstring(block[345:476])
            atime = GoTime(parse_number(block[476:488], "atime"))
            ctime = GoTime(parse_number(block[488:500], "ctime"))
        elif is_ustar:
            prefix = _cstring(block[345:500])
        elif is_gnu:
            if block[345]:
                atime = GoTime(parse_number(block[345:357], "atime"))
            if block[357]:
                ctime = GoTime(parse_number(block[357:369], "ctime"))
        if prefix:
            name = f"{prefix}/{name}"
        header = TarHeader(
            typeflag=chr(block[156]),
            name=name,
            linkname=_cstring(block[157:257]),
            mode=parse_repeated_number(block[100:108], "mode"),
            uid=parse_repeated_number(block[108:116], "uid"),
            gid=parse_repeated_number(block[116:124], "gid"),
            size=parse_number(block[124:136], "size"),
            mtime=GoTime(parse_number(block[136:148], "mtime")),
            atime=atime,
            ctime=ctime,
            devmajor=devmajor,
            devminor=devminor,
            pax_records=pax,
        )
        if pax:
            _merge_pax(header, pax)
        return header


def _merge_pax(header: TarHeader, pax: dict[str, str]) -> None:
    for key, value in pax.items():
        if not value:
            continue  # Go keeps the USTAR value for empty records
        try:
            if key == "path":
                header.name = value
            elif key == "linkpath":
                header.linkname = value
            elif key == "uid":
                header.uid = int(value, 10)
            elif key == "gid":
                header.gid = int(value, 10)
            elif key == "size":
                header.size = int(value, 10)
            elif key == "mtime":
                header.mtime = _pax_time(value)
            elif key == "atime":
                header.atime = _pax_time(value)
            elif key == "ctime":
                header.ctime = _pax_time(value)
        except ValueError:
            raise FormatError(f"invalid PAX record {key}={value!r}") from None
