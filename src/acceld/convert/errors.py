"""Errors of the conversion pipeline."""

from __future__ import annotations

from acceld.errors import AcceldError
from acceld.formats.driver import FormatError


class ConvertError(AcceldError):
    """A conversion that cannot go on (bad request, driver failure, local I/O failure)."""


class CorruptSourceLayerError(FormatError):
    """A source layer blob whose digest, compression or decompressed content is wrong."""
