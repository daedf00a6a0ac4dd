"""JSON text arriving in pieces, parsed one value at a time: a TOC of a million entries is walked
entry by entry instead of being loaded as one document (the eStargz and zstd:chunked readers).

The JSON grammar is the standard library's (`raw_decode` per value); callers walk the containers
they stream with `peek` and `take`.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any

from acceld.formats.driver import FormatError

_PIECE = 1 << 20
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()


class JsonText:
    """UTF-8 JSON text arriving in pieces, consumed from the front."""

    def __init__(self, pieces: Iterator[bytes], what: str = "eStargz TOC") -> None:
        self._pieces = pieces
        self.what = what  # names the text in errors
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("surrogatepass")
        self._text = ""
        self._at = 0
        self._ended = False

    def _more(self, at_least: int = 1) -> bool:
        """Read until `at_least` more characters are buffered; False when the text has ended."""
        wanted = len(self._text) - self._at + at_least
        self._text = self._text[self._at :]
        self._at = 0
        while len(self._text) < wanted:
            piece = next(self._pieces, None)
            try:
                self._text += self._decoder.decode(piece or b"", final=piece is None)
            except UnicodeDecodeError as exc:
                raise FormatError(f"{self.what}: not valid JSON ({exc})") from None
            if piece is None:
                self._ended = True
                return len(self._text) >= wanted
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            while self._at < len(self._text) and self._text[self._at] in _WHITESPACE:
                self._at += 1
            if self._at < len(self._text):
                return self._text[self._at]
            if not self._more():
                return ""

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise FormatError(f"{self.what}: not valid JSON (expected {expected!r})")
        self._at += 1

    def value(self) -> Any:
        """The next JSON value; reads more text while the buffered text does not hold all of it."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._at)
            except ValueError as exc:
                if self._ended:
                    raise FormatError(f"{self.what}: not valid JSON ({exc})") from None
            else:
                if end < len(self._text) or self._ended:  # a number at the end may go on
                    self._at = end
                    return value
            self._more(max(_PIECE, len(self._text) - self._at))
