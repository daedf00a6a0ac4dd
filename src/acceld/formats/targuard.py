"""One set of rules for every untrusted layer tar, whichever driver or reader consumes it.

`TarGuard` watches the uncompressed tar bytes as they flow from the decompressor to a driver (or
to `acceld check`) and stops the stream, with one line naming the limit, as soon as the layer
exceeds a `Limits` value: uncompressed bytes, entries, the size of an extension header (PAX
records, GNU long names; refused before their payload is read), the declared size of a sparse
file. It also applies the path rule every format shares (`check_entry_path`): no `..`
component, no NUL in a PAX path, no entry below a symlink of the same layer — a runtime
would write that entry outside the directory the layer names — and no hardlink to anything but
a non-directory earlier in the same layer: runtimes unpack each layer onto an empty directory,
so a link to a lower layer's file (or to nothing) cannot be made.

Headers are parsed as Go's `archive/tar` reads them (the reference readers are Go programs).
A header the guard cannot make sense of ends its watch: the driver's own parser then reports
the damage in its own words. A reader that parses every header of the stream anyway
(`tarreader.HeaderReader`) can hand them to the guard instead (`take_headers`): each header is
then parsed once, and checked by the same code at the same point of the stream.
"""

from __future__ import annotations

from collections.abc import Callable

from acceld.formats.driver import FormatError
from acceld.formats.limits import Limits, exceeded
from acceld.formats.tarfields import checksum_ok, cstring, parse_number, parse_pax_records

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_EXTENSIONS = frozenset(b"xgLK")
_HEADER_ONLY = frozenset(b"123456")  # Go skips no payload for these, whatever their size field says
_SYMLINK = ord("2")
_HARDLINK = ord("1")
_GNU_SPARSE = ord("S")
_WHITEOUT = b".wh."
_DIRECTORY = ord("5")
_HASH_MASK = (1 << 64) - 1
_BUCKET_SHIFT = 64 - 12  # a name set's buckets: by the top 12 bits of a name's hash
_SPARSE_SIZE_KEYS = ("GNU.sparse.realsize", "GNU.sparse.size")
_SPARSE_SIZES = frozenset(_SPARSE_SIZE_KEYS)


class PathError(FormatError):
    """A tar entry name no format may publish."""


def clean_parts(name: bytes) -> list[bytes]:
    """The components of a tar name without empty and `.` parts."""
    parts = name.split(b"/")
    if b"" in parts or b"." in parts:
        return [part for part in parts if part not in (b"", b".")]
    return parts


def check_entry_path(name: bytes, what: str = "tar entry") -> list[bytes]:
    """The path rule of every driver: the cleaned components of `name`, or PathError."""
    parts = clean_parts(name)
    if b".." in parts:
        raise PathError(f"{what} {_show(name)} has a '..' component (it would escape the root)")
    return parts


def _show(name: bytes) -> str:
    text = name.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= 200 else text[:200] + "…")


class TarGuard:
    """Feed it every uncompressed byte of one layer in order (`feed`); it raises on the first violation.

    `max_bytes`/`bytes_key` bound the stream (the per-layer limit, or what is left of the per-image one).
    """

    def __init__(
        self, limits: Limits, max_bytes: int | None = None, bytes_key: str = "max_layer_bytes"
    ) -> None:
        self._limits = limits
        self._max_bytes = limits.max_layer_bytes if max_bytes is None else max_bytes
        self._bytes_key = bytes_key
        self.total = 0
        self.entries = 0
        self._watching = True
        self._skip = 0
        self._want = _BLOCK
        self._buffer = bytearray()
        self._handler: Callable[[bytes], None] = self._header
        self._pax: dict[str, bytes] = {}
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._symlinks: set[bytes] = set()
        # the parent directory `_check_parents` found last to be below no symlink: while no
        # symlink is added, its next entries (a tar lists a directory's together) need no check
        self._checked_parent: bytes | None = None
        self._non_directories = _NameSet()
        self._headers_taken = False
        self._ended = False

    def feed(self, data: memoryview | bytes) -> None:
        size = len(data)
        self.total += size
        if self.total > self._max_bytes:
            raise exceeded(self._limits, self._bytes_key, f"decompressing {self.total:,} bytes")
        if self._headers_taken:
            return
        offset = 0
        while self._watching and offset < size:
            if self._skip:
                step = min(self._skip, size - offset)
                self._skip -= step
                offset += step
                continue
            step = min(self._want - len(self._buffer), size - offset)
            self._buffer += data[offset : offset + step]
            offset += step
            if len(self._buffer) == self._want:
                piece = bytes(self._buffer)
                self._buffer.clear()
                self._handler(piece)

    def take_headers(self) -> bool:
        """The caller will parse every header of the stream and hand each to the guard as it reads
        it, before interpreting it: `extension_header`, `entry_header`, then `end_of_archive`;
        `feed` then only counts bytes. Possible before any byte was fed (False otherwise: the guard
        parses the bytes itself); True again once taken, so a caller may take the headers first and
        hand the guard to the reader it creates later."""
        if not self._headers_taken and self.total:
            return False
        self._headers_taken = True
        return True

    def extension_header(self, typeflag: int, size: int) -> None:
        """A PAX (`x`, `g`) or GNU long name/link (`L`, `K`) header, before its payload is read."""
        if self._watching:
            self._check_extension(typeflag, size)

    def entry_header(
        self, block: bytes, pax: dict[str, bytes], long_name: bytes | None, long_link: bytes | None
    ) -> None:
        """An entry's header block (checksum verified), with what its extension headers set: the
        local PAX records (`path`, `linkpath`, `size` and the `GNU.sparse.` sizes at least, the
        last of each key) and the NUL-terminated GNU long name and link."""
        if self._watching:
            self._pax, self._long_name, self._long_link = pax, long_name, long_link
            if self._check_entry(block, 0) is None:
                self._watching = False

    def end_of_archive(self) -> None:
        """The reader has read the stream to its end (a zero block, or the end at a block boundary)."""
        self._watching = False
        self._ended = True

    def check_complete(self) -> None:
        """After a conversion: a reader that took the headers must have read them all."""
        if self._headers_taken and self._watching and not self._ended:
            raise RuntimeError("the tar reader that took the guard's headers stopped before the end")

    def _expect(self, size: int, handler: Callable[[bytes], None], skip: int = 0) -> None:
        self._skip, self._want, self._handler = skip, size, handler

    def _next_header(self, skip: int = 0) -> None:
        self._expect(_BLOCK, self._header, skip)

    def _header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._watching = False  # end of archive (what follows is padding for every reader)
            return
        try:
            if not checksum_ok(block):
                raise FormatError("bad checksum")
            size = parse_number(block[124:136], "size")
        except FormatError:
            self._watching = False
            return
        typeflag = block[156]
        if typeflag in _EXTENSIONS:
            self._check_extension(typeflag, size)
            if not self._watching:
                return
            if size == 0:
                self._extension(typeflag, b"")
            else:
                self._expect(size, lambda payload: self._extension(typeflag, payload))
            return
        self._entry(block, size)

    def _check_extension(self, typeflag: int, size: int) -> None:
        if size > self._limits.max_header_bytes:
            kind = "PAX header" if typeflag in b"xg" else "GNU long name/link header"
            raise exceeded(self._limits, "max_header_bytes", f"a {kind} of {size:,} bytes")
        if size < 0:
            self._watching = False

    def _extension(self, typeflag: int, payload: bytes) -> None:
        if typeflag == ord("x"):
            try:
                self._pax.update(parse_pax_records(payload))
            except FormatError:
                self._watching = False
                return
        elif typeflag == ord("L"):
            self._long_name = cstring(payload)
        elif typeflag == ord("K"):
            self._long_link = cstring(payload)
        self._next_header(-len(payload) % _BLOCK)

    def _entry(self, block: bytes, size: int) -> None:
        checked = self._check_entry(block, size)
        if checked is None:
            self._watching = False
            return
        typeflag = block[156]
        payload = 0 if typeflag in _HEADER_ONLY else checked
        if payload < 0:
            self._watching = False
        elif typeflag == _GNU_SPARSE and block[482]:
            self._expect(_BLOCK, lambda ext: self._sparse_extension(ext, payload))
        else:
            self._next_header(payload + -payload % _BLOCK)

    def _check_entry(self, block: bytes, size: int) -> int | None:
        """Check one entry against the limits and path rules; its size (None: a PAX size that is
        not a number, which the driver reports)."""
        self.entries += 1
        if self.entries > self._limits.max_layer_entries:
            raise exceeded(self._limits, "max_layer_entries", f"the layer has {self.entries:,}+ entries")
        pax = self._pax
        typeflag = block[156]
        pax_path: bytes | None = None
        pax_link: bytes | None = None
        if pax:
            pax_path, pax_link = pax.get("path"), pax.get("linkpath")
            if pax_path or pax_link:
                for field, value in (("path", pax_path), ("linkpath", pax_link)):
                    if value and b"\0" in value:
                        raise PathError(f"PAX {field} {_show(value)} contains a NUL byte")
            pax_size = pax.get("size")
            if pax_size:
                try:
                    size = int(pax_size)
                except ValueError:
                    return None
        name = self._long_name or pax_path or _header_name(block)
        if typeflag == _GNU_SPARSE or (pax and not _SPARSE_SIZES.isdisjoint(pax)):
            self._check_sparse(block, typeflag, name)
        parts = check_entry_path(name)
        # no component was dropped: the name is its own key (most names; no join)
        key = name if len(parts) == name.count(b"/") + 1 else b"/".join(parts)
        if typeflag == _HARDLINK:
            link = self._long_link or pax_link or cstring(block[157:257])
            target = check_entry_path(link, f"hardlink {_show(name)} to")
            if b"/".join(target) not in self._non_directories:
                raise PathError(
                    f"hardlink {_show(name)} points to {_show(link)}, which is not a file earlier in "
                    "the same layer (runtimes unpack every layer on its own)"
                )
        if self._symlinks:
            self._check_parents(name, key)
        if typeflag != _DIRECTORY:
            self._non_directories.add(key)
        if parts and (typeflag == _SYMLINK or self._symlinks):
            self._track_symlinks(parts, key, typeflag)
        self._pax, self._long_name, self._long_link = {}, None, None
        return size

    def _sparse_extension(self, block: bytes, payload: int) -> None:
        if block[504]:
            self._expect(_BLOCK, lambda ext: self._sparse_extension(ext, payload))
        else:
            self._next_header(payload + -payload % _BLOCK)

    def _check_sparse(self, block: bytes, typeflag: int, name: bytes) -> None:
        declared = 0
        try:
            if typeflag == _GNU_SPARSE:
                declared = parse_number(block[483:495], "realsize")
            for key in _SPARSE_SIZE_KEYS:
                if key in self._pax:
                    declared = max(declared, int(self._pax[key]))
        except (FormatError, ValueError):
            return  # the driver reports the malformed field
        if declared > self._limits.max_sparse_bytes:
            raise exceeded(
                self._limits, "max_sparse_bytes", f"sparse file {_show(name)} declares {declared:,} bytes"
            )

    def _check_parents(self, name: bytes, key: bytes) -> None:
        """No parent of the cleaned name `key` may be a symlink of this layer."""
        parent_end = key.rfind(b"/")
        if parent_end < 0:
            return
        parent = key[:parent_end]
        if parent == self._checked_parent:
            return
        slash = key.find(b"/")
        while slash >= 0:
            ancestor = key[:slash]
            if ancestor in self._symlinks:
                raise PathError(
                    f"tar entry {_show(name)} lies below the symlink {_show(ancestor)} of the same layer"
                )
            slash = key.find(b"/", slash + 1)
        self._checked_parent = parent

    def _track_symlinks(self, parts: list[bytes], key: bytes, typeflag: int) -> None:
        if typeflag == _SYMLINK:
            self._symlinks.add(key)
            self._checked_parent = None
            return
        if self._symlinks:
            self._symlinks.discard(key)
            if parts[-1].startswith(_WHITEOUT):
                self._symlinks.discard(b"/".join([*parts[:-1], parts[-1][len(_WHITEOUT) :]]))


def taking_headers(guard: TarGuard | None) -> TarGuard | None:
    """`guard` once its headers are taken (`TarGuard.take_headers`); None without a guard or when
    it parses the bytes itself."""
    return guard if guard is not None and guard.take_headers() else None


def _header_name(block: bytes) -> bytes:
    """The name fields of a header block (a USTAR prefix joined)."""
    end = block.find(0, 0, 100)
    name = block[: end if end >= 0 else 100]
    if block[257:263] == b"ustar\0" and block[345]:
        prefix_end = 476 if block[508:512] == b"tar\0" else 500
        prefix = cstring(block[345:prefix_end])
        if prefix:
            name = prefix + b"/" + name
    return name


class _NameSet:
    """A set of names kept as 8-byte hashes (about 10 bytes a name, not the ~100 of a set of bytes)
    so that a layer of a million entries stays small. A hash collision can only make a missing
    hardlink target look present; the driver's or the reader's own check then reports it.
    Buckets by the hash's top 12 bits: each bytearray costs ~100 bytes of its own, so at most 4 096
    of them (with 65 536 there were ~20 bytes of buckets a name even at a million names)."""

    def __init__(self) -> None:
        self._buckets: dict[int, bytearray] = {}

    def add(self, name: bytes) -> None:
        key = hash(name) & _HASH_MASK
        bucket = self._buckets.get(key >> _BUCKET_SHIFT)
        if bucket is None:
            bucket = self._buckets[key >> _BUCKET_SHIFT] = bytearray()
        bucket += key.to_bytes(8, "little")

    def __contains__(self, name: bytes) -> bool:
        key = hash(name) & _HASH_MASK
        bucket = self._buckets.get(key >> _BUCKET_SHIFT)
        if bucket is None:
            return False
        needle = key.to_bytes(8, "little")
        found = bucket.find(needle)
        while found >= 0:
            if found % 8 == 0:
                return True
            found = bucket.find(needle, found + 1)
        return False
