"""The error every zstd:chunked reader check raises."""

from __future__ import annotations

from acceld.formats.driver import FormatError


def invalid(message: str) -> FormatError:
    """A one-line FormatError about a zstd:chunked blob that fails a check."""
    return FormatError(f"zstd:chunked: {message}")
