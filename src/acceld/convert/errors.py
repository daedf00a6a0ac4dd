"""Errors of the conversion pipeline."""

from __future__ import annotations

from acceld.errors import AcceldError
from acceld.formats.driver import FormatError


class ConvertError(AcceldError):
    """A conversion that cannot go on (bad request, driver failure, local I/O failure)."""


class NotApplicableError(AcceldError):
    """The driver has nothing to add to this image (e.g. no layer is large enough for SOCI).

    Not a failure: nothing is pushed, the CLI exits 0 and the service records the task as skipped.
    """


class CorruptSourceLayerError(FormatError):
    """A source layer blob whose digest, compression or decompressed content is wrong."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first user-facing error of a task group (an AcceldError if there is one)."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return next((exc for exc in leaves if isinstance(exc, AcceldError)), leaves[0])
