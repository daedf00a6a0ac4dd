"""An eStargz TOC read as a stream: the TOC member inflated piece by piece, its JSON parsed one entry
at a time, and the entries kept in a temp file, so that a TOC of a million entries never sits in
memory as one document or as a million dicts.

The JSON grammar is the standard library's (`raw_decode` per value); only the top-level object
and the `entries` array are walked here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from isal import isal_zlib

from acceld.formats.driver import FormatError
from acceld.formats.jsonstream import JsonText
from acceld.formats.limits import Limits, exceeded
from acceld.formats.records import RecordFile

TOC_NAME = "stargz.index.json"
_PIECE = 1 << 20
_BLOCK = 512
ENTRY_TYPES = frozenset({"reg", "dir", "symlink", "char", "block", "fifo", "hardlink", "chunk"})


def read_toc(
    blob: BinaryIO, start: int, end: int, limits: Limits, directory: Path | None = None
) -> tuple[str, RecordFile]:
    """The TOC digest and entries of the TOC member at blob[start:end] (nothing may follow it)."""
    digest = hashlib.sha256()
    entries = RecordFile(directory, "estargz-toc-")
    try:
        parse_toc(JsonText(_toc_json(_inflated(blob, start, end, limits), limits, digest)), entries)
        entries.seal()
    except BaseException:
        entries.close()
        raise
    return "sha256:" + digest.hexdigest(), entries


def _inflated(blob: BinaryIO, start: int, end: int, limits: Limits) -> Iterator[bytes]:
    """The content of the one gzip member at blob[start:end], at most `max_metadata_bytes` of it."""
    inflater = isal_zlib.decompressobj(31)
    blob.seek(start)
    left = end - start
    total = 0
    pending = b""
    while not inflater.eof:
        if not pending:
            pending = blob.read(min(_PIECE, left))
            left -= len(pending)
            if not pending:
                raise FormatError("eStargz TOC: gzip member is truncated")
        try:
            content = inflater.decompress(pending, _PIECE)
        except Exception as exc:  # isal_zlib.error
            raise FormatError(f"eStargz TOC: bad gzip data ({exc})") from None
        pending = inflater.unconsumed_tail
        total += len(content)
        if total > limits.max_metadata_bytes:
            raise exceeded(limits, "max_metadata_bytes", "the eStargz TOC inflates to more bytes")
        if content:
            yield content
    if inflater.unused_data or pending or left:
        raise FormatError("eStargz TOC: data between the TOC member and the footer")


def _toc_json(member: Iterator[bytes], limits: Limits, digest: Any) -> Iterator[bytes]:
    """The JSON file of the TOC member's tar (checked: the tar holds that one file and zeros)."""
    header = b""
    for piece in member:
        header += piece
        if len(header) >= _BLOCK:
            break
    rest, header = header[_BLOCK:], header[:_BLOCK]
    if len(header) < _BLOCK or header[:100].rstrip(b"\0") != TOC_NAME.encode():
        raise FormatError(f"eStargz TOC: the TOC member does not start with a {TOC_NAME} tar header")
    try:
        json_left = int(header[124:136].strip(b" \0"), 8)
    except ValueError:
        raise FormatError("eStargz TOC: bad size in the TOC tar header") from None
    if json_left > limits.max_metadata_bytes:
        raise exceeded(limits, "max_metadata_bytes", "the eStargz TOC inflates to more bytes")
    for piece in itertools.chain((rest,), member):
        text, tail = piece[:json_left], piece[json_left:]
        json_left -= len(text)
        if text:
            digest.update(text)
            yield text
        if tail.strip(b"\0"):
            raise FormatError("eStargz TOC: TOC JSON is truncated or followed by data")
    if json_left:
        raise FormatError("eStargz TOC: TOC JSON is truncated or followed by data")


def parse_toc(text: JsonText, entries: RecordFile) -> None:
    if text.peek() != "{":
        raise FormatError("eStargz TOC: not a JSON object")
    text.take("{")
    seen_entries = False
    while text.peek() != "}":
        if text.peek() != '"':
            raise FormatError("eStargz TOC: not valid JSON (expected a key)")
        key = text.value()
        text.take(":")
        if key != "entries":
            text.value()
        elif seen_entries:
            raise FormatError("eStargz TOC: `entries` appears twice")
        else:
            seen_entries = True
            _parse_entries(text, entries)
        if text.peek() != ",":
            break
        text.take(",")
    text.take("}")
    if text.peek():
        raise FormatError("eStargz TOC: not valid JSON (data after the TOC object)")
    if not seen_entries:
        raise FormatError("eStargz TOC: `entries` is not a list of objects")


def _parse_entries(text: JsonText, entries: RecordFile) -> None:
    if text.peek() != "[":
        text.value()
        raise FormatError("eStargz TOC: `entries` is not a list of objects")
    text.take("[")
    if text.peek() == "]":
        text.take("]")
        return
    while True:
        entry = text.value()
        if not isinstance(entry, dict):
            raise FormatError("eStargz TOC: `entries` is not a list of objects")
        if not isinstance(entry.get("name"), str) or entry.get("type") not in ENTRY_TYPES:
            raise FormatError(f"eStargz TOC: bad entry {json.dumps(entry)[:200]}")
        entries.append(entry)
        if text.peek() != ",":
            break
        text.take(",")
    text.take("]")
