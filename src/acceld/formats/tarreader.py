"""Tar entries read one header at a time, the way Go's `archive/tar` reader reads them.

Runtimes unpack layers with Go's reader, so the drivers that walk a layer tar entry by entry (the
eStargz scan, the Nydus tree) see the entries it would see: PAX `x` records and GNU `L`/`K` long
names apply to the next header, the USTAR prefix is joined to the name, type `\\0` becomes a
regular file (a directory when the name ends in `/`), numbers may be octal or base-256, an empty
PAX value keeps the header's value, header-only types (links, devices, directories, FIFOs) have
no payload whatever their size field says. GNU sparse files (old GNU `S` headers and the PAX
0.0, 0.1 and 1.0 maps) are reported with their data segments when the caller accepts them.

The caller reads an entry's payload itself, right after `next` returned it (or not at all:
`next` skips what is left of it and its padding).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Protocol

from acceld.formats.driver import FormatError
from acceld.formats.tarfields import (
    NUMBERS,
    checksum_ok,
    cstring,
    decode,
    parse_number,
    parse_repeated_number,
    pax_record_list,
)
from acceld.formats.targuard import TarGuard, taking_headers

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
TYPE_REG, TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO = "0123456"
TYPE_GNU_SPARSE = "S"
_TYPE_REG_OLD = "\0"
_HEADER_ONLY = frozenset("123456")
_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = "x", "g", "L", "K"
_EXTENSIONS = frozenset((_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK))
_MAX_SPECIAL_FILE = 1 << 20  # Go's limit for PAX and GNU long-name payloads
_XATTR_PREFIX = "SCHILY.xattr."
_SPARSE_PREFIX = "GNU.sparse."
_SKIP_PIECE = 1 << 20
# name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, prefix (the owner fields
# between magic and prefix: `_owners`)
_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s6s82x155s")


class TarSource(Protocol):
    """The uncompressed tar: `read` returns fewer bytes than asked only at the end of the stream."""

    position: int

    def read(self, size: int) -> bytes: ...


@dataclass(slots=True)
class Header:
    """One entry as Go's tar reader reports it."""

    typeflag: str
    name: str
    linkname: str
    size: int  # a sparse file's whole size; otherwise what the size field (or PAX record) says
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] | None = None
    start: int = 0  # first header block in the stream, extension headers included
    payload: int = 0  # bytes that follow in the stream (a sparse file: its stored data segments)
    sparse: list[tuple[int, int]] | None = None  # a sparse file's (offset, length) data segments


def parse_pax_time(value: str) -> int:
    """PAX `sec[.frac]` as nanoseconds (fraction truncated to 9 digits, as Go does)."""
    seconds, _, fraction = value.partition(".")
    if seconds.isdigit() and (not fraction or fraction.isdigit()):  # the usual: no sign
        return int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, "0"))
    sign = -1 if value.startswith("-") else 1
    seconds, _, fraction = value.lstrip("+-").partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise FormatError(f"bad tar header: PAX time {value!r}")
    nanos = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9] or "0")
    return sign * nanos


def parse_header(block: bytes) -> Header:
    """The fields of one header block (no extension headers applied)."""
    name, mode, uid, gid, size, mtime, _, typeflag, linkname, magic, prefix = _FIELDS.unpack_from(block)
    size_n = parse_number(size, "size")
    known = NUMBERS.get  # values of repeated fields, looked up without a call
    mode_n, uid_n, gid_n = known(mode), known(uid), known(gid)
    if mode_n is None or uid_n is None or gid_n is None:
        mode_n = parse_repeated_number(mode, "mode")
        uid_n, gid_n = parse_repeated_number(uid, "uid"), parse_repeated_number(gid, "gid")
    mtime_n = parse_number(mtime, "mtime")
    header = Header(
        typeflag.decode("latin-1"),
        name.partition(b"\0")[0].decode("utf-8", "surrogateescape"),
        linkname.partition(b"\0")[0].decode("utf-8", "surrogateescape") if linkname[0] else "",
        size_n,
        mode_n,
        uid_n,
        gid_n,
        mtime_n * 1_000_000_000,
        *_owners(block[257:345]),
    )
    if prefix[0] and magic == b"ustar\0":
        if block[508:512] == b"tar\0":
            prefix = prefix[:131]  # star keeps times after a shorter prefix
        header.name = decode(cstring(prefix)) + "/" + header.name
    return header


_OWNER_FIELDS = struct.Struct("6s2s32s32s8s8s")  # magic, version, uname, gname, devmajor, devminor


# cached: a layer's headers repeat a few owners
@functools.lru_cache(maxsize=4096)
def _owners(fields: bytes) -> tuple[str, str, int, int]:
    """(uname, gname, devmajor, devminor) from a header's bytes 257-345; only USTAR and GNU headers
    have them."""
    magic, version, uname, gname, devmajor, devminor = _OWNER_FIELDS.unpack(fields)
    if magic != b"ustar\0" and (magic != b"ustar " or version != b" \0"):
        return "", "", 0, 0
    return (
        uname.partition(b"\0")[0].decode("utf-8", "surrogateescape"),
        gname.partition(b"\0")[0].decode("utf-8", "surrogateescape"),
        parse_repeated_number(devmajor, "devmajor"),
        parse_repeated_number(devminor, "devminor"),
    )


def _apply_pax(header: Header, pax: dict[str, bytes]) -> None:
    xattrs: dict[str, bytes] = {}
    for key, raw in pax.items():
        if key.startswith(_XATTR_PREFIX):
            xattrs[key[len(_XATTR_PREFIX) :]] = raw
            continue
        if not raw:
            continue  # an empty PAX value keeps the header's value
        value = raw.decode("utf-8", "surrogateescape")
        try:
            if key == "mtime":  # the record most PAX headers carry (sub-second times)
                header.mtime_ns = parse_pax_time(value)
            elif key == "path":
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
        except ValueError:
            raise FormatError(f"bad tar: PAX record {key}={value!r}") from None
    if xattrs:
        header.xattrs = xattrs


class HeaderReader:
    """Reads the headers of a tar stream; `next()` returns each entry in tar order, then None.

    `sparse=False` refuses sparse files (any GNU sparse header or PAX record) instead of
    reporting their maps. `strict_globals` refuses a PAX global header that sets file attributes
    (one that only carries a comment, as `git archive` writes, is always skipped; otherwise global
    headers are skipped as runtimes skip them).

    `guard`: the TarGuard watching the bytes of `source`, given before anything was read from it;
    it is handed every header as it is read (see `TarGuard.take_headers`) instead of parsing
    them a second time, so the caller must read the headers up to the end of the archive.
    """

    def __init__(
        self, source: TarSource, *, sparse: bool, strict_globals: bool, guard: TarGuard | None = None
    ) -> None:
        self.source = source
        self.sparse = sparse
        self.strict_globals = strict_globals
        self._guard = taking_headers(guard)
        self._next_at = 0  # where the next header starts
        self._done = False

    def next(self) -> Header | None:
        if self._done:
            return None
        source = self.source
        if source.position < self._next_at:
            self._skip_to(self._next_at)
        guard = self._guard
        start = -1
        pax: dict[str, bytes] = {}
        sparse_map: list[bytes] = []
        sparse_records = False
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block_start = source.position
            block = source.read(BLOCK)
            if not block:
                break  # Go accepts a tar that ends at a block boundary without the EOF marker
            if len(block) != BLOCK:
                raise FormatError(f"truncated tar: partial header block at byte {block_start}")
            if block == ZERO_BLOCK:
                following = source.read(BLOCK)
                if following and following != ZERO_BLOCK:
                    raise FormatError(f"bad tar: zero block followed by data at byte {block_start}")
                break
            if not checksum_ok(block):
                raise FormatError(f"bad tar: header checksum mismatch at byte {block_start}")
            typeflag = chr(block[156])
            if typeflag in _EXTENSIONS:
                size = parse_number(block[124:136], "size")
                if guard is not None:
                    guard.extension_header(block[156], size)
                payload = self._extension_payload(size, block_start)
                if typeflag == _PAX_GLOBAL:
                    if start >= 0:
                        raise FormatError(
                            f"unsupported tar entry type 'g' (PAX global header) at byte {block_start}"
                        )
                    self._global(payload, block_start)
                    continue
                if start < 0:
                    start = block_start
                if typeflag == _PAX_LOCAL:
                    for key, value in pax_record_list(payload):
                        if key.startswith(_SPARSE_PREFIX):
                            sparse_records = True
                            if key in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
                                sparse_map.append(value)
                                continue
                        pax[key] = value
                elif typeflag == _GNU_LONGNAME:
                    long_name = cstring(payload)
                else:
                    long_link = cstring(payload)
                continue
            if start < 0:
                start = block_start
            if guard is not None:
                guard.entry_header(block, pax, long_name, long_link)
            header = parse_header(block)
            if pax:
                _apply_pax(header, pax)
            if long_name:
                header.name = decode(long_name)
            if long_link:
                header.linkname = decode(long_link)
            if typeflag == _TYPE_REG_OLD:
                header.typeflag = TYPE_DIR if header.name.endswith("/") else TYPE_REG
            header.start = start
            return self._finish(header, block, pax, sparse_map if sparse_records else None)
        if start >= 0:
            raise FormatError("truncated tar: extension header without a following entry")
        self._done = True
        if guard is not None:
            guard.end_of_archive()
        return None

    def _finish(
        self, header: Header, block: bytes, pax: dict[str, bytes], sparse_map: list[bytes] | None
    ) -> Header:
        """`sparse_map`: the `GNU.sparse.offset`/`numbytes` values, None without `GNU.sparse.` records."""
        payload = 0 if header.typeflag in _HEADER_ONLY else header.size
        if payload < 0:
            raise FormatError(f"bad tar: negative size for {header.name!r}")
        header.payload = payload
        self._next_at = self.source.position + payload + -payload % BLOCK
        if header.typeflag == TYPE_GNU_SPARSE:
            if not self.sparse:
                raise FormatError(f"unsupported tar: sparse file {header.name!r} (GNU 'S' entry)")
            self._old_gnu_sparse(header, block)
        elif sparse_map is not None:
            if not self.sparse:
                raise FormatError("unsupported tar: sparse files (GNU.sparse PAX records)")
            if sparse_map:
                pax["GNU.sparse.map"] = b",".join(sparse_map)
            self._pax_sparse(header, pax)
        return header

    def _extension_payload(self, size: int, at: int) -> bytes:
        if not 0 <= size <= _MAX_SPECIAL_FILE:
            raise FormatError(f"bad tar: extension header of {size} bytes at byte {at}")
        return self._read_exact(size + -size % BLOCK, "an extension header")[:size]

    def _global(self, payload: bytes, at: int) -> None:
        """Drop a PAX global header (runtimes ignore them); one that sets file attributes for every
        later entry cannot be kept per entry by the writers that copy headers (`strict_globals`)."""
        keys = {key for key, _ in pax_record_list(payload)}
        if self.strict_globals and keys - {"comment"}:
            raise FormatError(f"unsupported tar: PAX global header with file attributes at byte {at}")

    def _old_gnu_sparse(self, header: Header, block: bytes) -> None:
        """An old GNU sparse header: 4 map entries in the header, 21 in each extension block."""
        segments: list[tuple[int, int]] = []
        entries, extended = block[386:482], block[482]
        while True:
            for at in range(0, len(entries), 24):
                if entries[at] == 0:
                    break
                segments.append(
                    (
                        parse_number(entries[at : at + 12], "sparse offset"),
                        parse_number(entries[at + 12 : at + 24], "sparse length"),
                    )
                )
            if not extended:
                break
            more = self._read_exact(BLOCK, "a sparse header")
            entries, extended = more[:504], more[504]
        self._next_at = self.source.position + header.payload + -header.payload % BLOCK
        header.size = parse_number(block[483:495], "realsize")
        header.sparse = segments

    def _pax_sparse(self, header: Header, pax: dict[str, bytes]) -> None:
        major, minor = pax.get("GNU.sparse.major"), pax.get("GNU.sparse.minor")
        if major == b"1" and minor == b"0":
            version_1 = True
        elif (major, minor) in ((b"0", b"0"), (b"0", b"1")) or (
            major is None and minor is None and pax.get("GNU.sparse.map")
        ):
            version_1 = False
        else:
            return  # not a GNU sparse file Go knows: its payload is the file
        name = pax.get("GNU.sparse.name")
        if name:
            header.name = decode(name)
        size = pax.get("GNU.sparse.size") or pax.get("GNU.sparse.realsize")
        numbers = self._map_1x0(header) if version_1 else self._map_0x1(pax)
        if size:
            header.size = _decimal(size, "GNU.sparse.size")
        header.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))

    def _map_0x1(self, pax: dict[str, bytes]) -> list[int]:
        count = _decimal(pax.get("GNU.sparse.numblocks", b""), "GNU.sparse.numblocks")
        text = pax.get("GNU.sparse.map", b"")
        numbers = [_decimal(part, "GNU.sparse.map") for part in text.split(b",")] if text else []
        if len(numbers) != 2 * count:
            raise FormatError("bad tar: GNU.sparse.map does not match GNU.sparse.numblocks")
        return numbers

    def _map_1x0(self, header: Header) -> list[int]:
        """The 1.0 map: decimal lines at the start of the payload, padded to a block."""
        text = b""
        read = 0
        numbers: list[int] = []
        wanted = 1
        while len(numbers) < wanted:
            while b"\n" not in text:
                if read + BLOCK > header.payload:
                    raise FormatError(f"bad tar: sparse map of {header.name!r} is truncated")
                text += self._read_exact(BLOCK, "a sparse map")
                read += BLOCK
            line, text = text.split(b"\n", 1)
            numbers.append(_decimal(line, "sparse map"))
            if len(numbers) == 1:
                wanted = 1 + 2 * numbers[0]
        header.payload -= read
        return numbers[1:]

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self.source.read(size)
        if len(data) != size:
            raise FormatError(f"truncated tar: stream ends inside {what} at byte {self.source.position}")
        return data

    def _skip_to(self, position: int) -> None:
        while self.source.position < position:
            if not self.source.read(min(position - self.source.position, _SKIP_PIECE)):
                raise FormatError("truncated tar: stream ends inside an entry")


def _decimal(raw: bytes, what: str) -> int:
    if not raw.isdigit():
        raise FormatError(f"bad tar: {what} {raw[:40]!r} is not a number")
    return int(raw)
