"""Scratch files for per-entry metadata that must not stay in memory (layers of a million entries)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

_BUFFER = 1 << 20


def create_spool(path: Path) -> BinaryIO:
    """A new file at `path` that only this user can read, open for buffered writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb", buffering=_BUFFER)
