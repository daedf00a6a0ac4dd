"""JSON output the way Go's encoding/json writes it (compact, HTML-safe, invalid UTF-8 → U+FFFD).

Strings in this package carry raw tar bytes as surrogate escapes; Go replaces invalid UTF-8
with U+FFFD when marshalling, so do we.
"""

from __future__ import annotations

import binascii
import datetime
import functools
import json
import re

from acceld.formats.driver import FormatError
from acceld.formats.zstdchunked.tarheaders import GoTime

_PLAIN = re.compile(r"[ !#-%\'-;=?-\[\]-~]*")  # printable ASCII that Go writes unescaped
_HTML_SAFE = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def string(value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return json.dumps(text, ensure_ascii=False).translate(_HTML_SAFE)


def b64(value: bytes) -> str:
    return '"' + binascii.b2a_base64(value, newline=False).decode("ascii") + '"'


def time(value: GoTime) -> str:
    """A UTC time.Time as Go marshals it (RFC 3339 with trailing-zero-trimmed nanoseconds)."""
    seconds = _seconds(value.sec)
    if not value.nsec:
        return f'"{seconds}Z"'
    return f'"{seconds}' + f".{value.nsec:09d}".rstrip("0") + 'Z"'


# cached: a layer's timestamps share few seconds (files come in packages)
@functools.lru_cache(maxsize=4096)
def _seconds(sec: int) -> str:
    """The date and time of a Unix second, as RFC 3339 without the zone."""
    try:
        stamp = datetime.datetime.fromtimestamp(sec, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise FormatError(f"timestamp {sec} cannot be represented in a zstd:chunked TOC") from None
    return (
        f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}"
        f"T{stamp.hour:02d}:{stamp.minute:02d}:{stamp.second:02d}"
    )
