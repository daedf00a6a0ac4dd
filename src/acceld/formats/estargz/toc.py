"""The TOC: its entries as the reference writer derives them from tar headers, and its JSON,
byte for byte as Go's `json.MarshalIndent(toc, "", "\\t")` writes it.

Keys follow the Go struct order; every key but `name` and `type` is left out when it is 0 or
empty; strings use Go's escapes (`<`, `>`, `&`, U+2028/2029 and control characters as `\\u00XX`,
each byte of invalid UTF-8 as `\\ufffd`); xattr values are standard base64.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from acceld.formats.estargz.order import Item, Landmark
from acceld.formats.estargz.tarscan import TarEntry
from acceld.formats.tarreader import TYPE_REG

LANDMARK_CONTENT = b"\x0f"
_LANDMARK_DIGEST = "sha256:" + hashlib.sha256(LANDMARK_CONTENT).hexdigest()
_TOC_TYPES = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char", "4": "block", "5": "dir", "6": "fifo"}

_ESCAPES: dict[int, str] = {code: f"\\u{code:04x}" for code in range(0x20)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord('"'): '\\"', ord("\\"): "\\\\"})
_ESCAPES.update({ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})
# undecodable bytes arrive as lone surrogates (surrogateescape); Go writes U+FFFD for each
_ESCAPES.update({code: "\\ufffd" for code in range(0xDC80, 0xDD00)})


def json_string(value: str) -> str:
    return '"' + value.translate(_ESCAPES) + '"'


def format_modtime(mtime_ns: int) -> str:
    """Go's `formatModtime`: "" for the Unix epoch second, else UTC rounded to the second (halves up)."""
    if mtime_ns // 1_000_000_000 == 0:
        return ""
    seconds = (mtime_ns + 500_000_000) // 1_000_000_000
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class TocEntry:
    """One TOC entry; field order is the JSON key order."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] | None = None
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""


_SCALAR_KEYS = (
    ("size", "size"),
    ("modtime", "modtime"),
    ("linkName", "link_name"),
    ("mode", "mode"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("userName", "user_name"),
    ("groupName", "group_name"),
    ("offset", "offset"),
    ("innerOffset", "inner_offset"),
    ("devMajor", "dev_major"),
    ("devMinor", "dev_minor"),
)
_TAIL_KEYS = (("digest", "digest"), ("chunkOffset", "chunk_offset"), ("chunkSize", "chunk_size"))


def _value(value: object) -> str:
    return json_string(value) if isinstance(value, str) else str(value)


def _entry_json(entry: TocEntry) -> str:
    pad = "\t\t\t"
    lines = [f'{pad}"name": {json_string(entry.name)}', f'{pad}"type": {json_string(entry.type)}']
    for key, attr in _SCALAR_KEYS:
        value = getattr(entry, attr)
        if value:
            lines.append(f'{pad}"{key}": {_value(value)}')
    if entry.xattrs:
        items = ",\n".join(
            f"{pad}\t{json_string(name)}: {json_string(base64.b64encode(entry.xattrs[name]).decode())}"
            for name in sorted(entry.xattrs)
        )
        lines.append(f'{pad}"xattrs": {{\n{items}\n{pad}}}')
    for key, attr in (*_TAIL_KEYS, ("chunkDigest", "chunk_digest")):
        value = getattr(entry, attr)
        if value:
            lines.append(f'{pad}"{key}": {_value(value)}')
    return "\t\t{\n" + ",\n".join(lines) + "\n\t\t}"


def toc_json_pieces(entries: Iterable[TocEntry]) -> Iterator[bytes]:
    """The TOC JSON (version 1, no trailing newline) in pieces, one entry at a time."""
    yield b'{\n\t"version": 1,\n\t"entries": ['
    separator = "\n"
    for entry in entries:
        yield (separator + _entry_json(entry)).encode("utf-8")
        separator = ",\n"
    yield b"\n\t]\n}" if separator != "\n" else b"]\n}"


def _name_if_changed(last: dict[int, str], owner: int, name: str) -> str:
    """The reference writer repeats a user/group name only when it changes for that id."""
    if not name or last.get(owner) == name:
        return ""
    last[owner] = name
    return name


def toc_entries(
    items: Iterable[Item], placements: Iterable[tuple[int, int]], chunk_size: int
) -> Iterator[TocEntry]:
    """TOC entries in blob order; `placements` are (offset, innerOffset) of every chunk in blob order."""
    user_names: dict[int, str] = {}
    group_names: dict[int, str] = {}
    placed = iter(placements)
    for item in items:
        if isinstance(item, Landmark):
            offset, inner = next(placed)
            yield TocEntry(
                name=item.name,
                type="reg",
                size=len(LANDMARK_CONTENT),
                offset=offset,
                inner_offset=inner,
                digest=_LANDMARK_DIGEST,
                chunk_digest=_LANDMARK_DIGEST,
            )
            continue
        entry = _toc_entry(item, user_names, group_names)
        if item.typeflag != TYPE_REG or item.size == 0:
            yield entry
            continue
        for number, start in enumerate(range(0, item.size, chunk_size)):
            chunk = entry if number == 0 else TocEntry(name=item.name, type="chunk", chunk_offset=start)
            chunk.offset, chunk.inner_offset = next(placed)
            chunk.chunk_size = chunk_size if item.size - start >= chunk_size else 0
            chunk.chunk_digest = "sha256:" + item.chunk_digest(number).hex()
            yield chunk


def _toc_entry(item: TarEntry, user_names: dict[int, str], group_names: dict[int, str]) -> TocEntry:
    entry = TocEntry(
        name=item.name,
        type=_TOC_TYPES[item.typeflag],
        modtime=format_modtime(item.mtime_ns),
        mode=item.mode,
        uid=item.uid,
        gid=item.gid,
        user_name=_name_if_changed(user_names, item.uid, item.uname),
        group_name=_name_if_changed(group_names, item.gid, item.gname),
        xattrs=item.xattrs,
    )
    if entry.type in ("hardlink", "symlink"):
        entry.link_name = item.linkname
    elif entry.type in ("char", "block"):
        entry.dev_major, entry.dev_minor = item.devmajor, item.devminor
    elif entry.type == "reg":
        entry.size = item.size
        entry.digest = "sha256:" + item.digest.hex()
    return entry
