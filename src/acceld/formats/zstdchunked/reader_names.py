"""The TOC's entry names, in an SQLite database in a temp file: the reader's per-name state (which
entries the tar-split has matched, where the TOC and the tar-split place each file's content) for
layers of a million files, with bounded memory.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

_PRAGMAS = (
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    "PRAGMA temp_store = FILE",
    "PRAGMA cache_size = -4096",  # KiB
)
_SCHEMA = """
CREATE TABLE names (
    name BLOB PRIMARY KEY, entry INTEGER NOT NULL, matched INTEGER NOT NULL DEFAULT 0,
    toc_at INTEGER, content_at INTEGER
) WITHOUT ROWID;
"""


class NameIndex:
    """Entry names (unique) with their TOC index; removed by `close`."""

    def __init__(self, directory: Path | None) -> None:
        fd, self._path = tempfile.mkstemp(prefix="zstdchunked-names-", suffix=".db", dir=directory)
        os.close(fd)
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            self._db.execute(pragma)
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")  # never committed: the database is scratch space

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)

    def add(self, name: str, entry: int) -> bool:
        """False when `name` is already there."""
        added = self._db.execute(
            "INSERT OR IGNORE INTO names (name, entry) VALUES (?, ?)", (_key(name), entry)
        )
        return added.rowcount == 1

    def unmatched(self) -> Unmatched:
        return Unmatched(self._db)

    def match(self, name: str) -> int | None:
        """The TOC index of the unmatched entry `name`, now matched; None when there is none."""
        row = self._db.execute(
            "SELECT entry FROM names WHERE name = ? AND matched = 0", (_key(name),)
        ).fetchone()
        if row is None:
            return None
        self._db.execute("UPDATE names SET matched = 1 WHERE name = ?", (_key(name),))
        return int(row[0])

    def first_unmatched(self, count: int) -> list[str]:
        rows = self._db.execute("SELECT name FROM names WHERE matched = 0 ORDER BY name LIMIT ?", (count,))
        return [_name(key) for (key,) in rows]

    def toc_at(self, name: str, position: int) -> None:
        """The TOC places `name`'s content at `position` of the stream."""
        self._db.execute("UPDATE names SET toc_at = ? WHERE name = ?", (position, _key(name)))

    def content_at(self, name: str, position: int) -> None:
        """The tar-split places `name`'s content at `position` of the stream."""
        self._db.execute("UPDATE names SET content_at = ? WHERE name = ?", (position, _key(name)))

    def first_misplaced(self) -> str | None:
        """The first name (in stream order) the TOC places where the tar-split does not."""
        row = self._db.execute(
            "SELECT name FROM names WHERE toc_at IS NOT NULL AND content_at IS NOT toc_at "
            "ORDER BY toc_at LIMIT 1"
        ).fetchone()
        return None if row is None else _name(row[0])


class Unmatched:
    """`name in unmatched`: a TOC entry `name` the tar-split has not matched yet."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        row = self._db.execute("SELECT 1 FROM names WHERE name = ? AND matched = 0", (_key(name),)).fetchone()
        return row is not None


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")


def _name(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")
