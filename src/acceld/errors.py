"""Errors every layer of acceld raises: one line for the user, and whether retrying can help."""

from __future__ import annotations


class AcceldError(Exception):
    """An expected failure with a one-line, user-facing message.

    `transient` marks failures that a later retry may fix (registry 5xx, 429, timeouts,
    connection resets); everything else is permanent (bad image, denied access, bad input).
    """

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient
