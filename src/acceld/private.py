"""Private directories and files: acceld's data and cache directories hold private image content,
the task database and secrets, so they are readable by their owner only (0700 / 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (parents as usual) and make it 0700; an existing one of ours is tightened,
    unless it is a shared directory (sticky bit, like /tmp) someone pointed acceld at."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if not path.stat().st_mode & stat.S_ISVTX:
        _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty with mode 0600 unless it exists; an existing one of ours is tightened."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
    _tighten(path, FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
