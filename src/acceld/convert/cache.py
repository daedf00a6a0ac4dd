"""The local layer cache: converted layers remembered by (source digest, driver, options).

A SQLite index (stdlib, safe for several processes) plus a content-addressed blob directory:

    <cache_dir>/index.sqlite
    <cache_dir>/blobs/sha256/<hex>     converted blobs
    <cache_dir>/tmp/                   spool and work files (same filesystem, so `adopt` is a rename)

Besides the blob, the cache remembers the registry repositories a converted blob was pushed to,
so a later conversion into another repository of that registry can mount it instead of
uploading it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from acceld.convert.errors import ConvertError
from acceld.formats.driver import LayerBlob
from acceld.private import FILE_MODE, private_dir, private_file

CACHE_DIR_ENV = "ACCELD_CACHE_DIR"
_STALE_WORK_SECONDS = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    source_digest TEXT NOT NULL,
    driver TEXT NOT NULL,
    options_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    annotations TEXT NOT NULL,
    last_used REAL NOT NULL,
    PRIMARY KEY (source_digest, driver, options_key)
);
CREATE TABLE IF NOT EXISTS locations (
    digest TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
"""


def default_cache_dir() -> Path:
    """$ACCELD_CACHE_DIR, else $XDG_CACHE_HOME/acceld, else ~/.cache/acceld."""
    if env := os.environ.get(CACHE_DIR_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "acceld"


@dataclass(frozen=True)
class CacheKey:
    source_digest: str
    driver: str
    options_key: str


class LayerCache:
    """Converted layers on local disk. All methods are safe across threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        self.tmp_dir = root / "tmp"
        try:
            for directory in (root, root / "blobs", self.blob_dir, self.tmp_dir):
                private_dir(directory)
            private_file(root / "index.sqlite")  # SQLite gives its -wal and -shm files this mode
            with self._db() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConvertError(f"cannot use layer cache {root}: {exc}") from None
        self._remove_stale_work()

    def _remove_stale_work(self) -> None:
        """Work directories left behind by conversions that were killed (older than a day)."""
        horizon = time.time() - _STALE_WORK_SECONDS
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime < horizon:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest.split(":", 1)[1]

    def lookup(self, key: CacheKey) -> LayerBlob | None:
        """The cached converted layer, or None. An index row whose blob file is gone is dropped."""
        with self._db() as db:
            row = db.execute(
                "SELECT digest, size, media_type, diff_id, annotations FROM layers "
                "WHERE source_digest=? AND driver=? AND options_key=?",
                (key.source_digest, key.driver, key.options_key),
            ).fetchone()
            if row is None:
                return None
            digest, size, media_type, diff_id, annotations = row
            path = self.blob_path(digest)
            if not path.is_file() or path.stat().st_size != size:
                db.execute(
                    "DELETE FROM layers WHERE source_digest=? AND driver=? AND options_key=?",
                    (key.source_digest, key.driver, key.options_key),
                )
                return None
            db.execute(
                "UPDATE layers SET last_used=? WHERE source_digest=? AND driver=? AND options_key=?",
                (time.time(), key.source_digest, key.driver, key.options_key),
            )
        return LayerBlob(
            path=path,
            media_type=media_type,
            digest=digest,
            size=size,
            diff_id=diff_id,
            annotations=json.loads(annotations),
        )

    def store(self, key: CacheKey, blob: LayerBlob) -> LayerBlob:
        """Remember `blob` (moved into the cache when it is on the cache's filesystem, else copied)."""
        target = self.blob_path(blob.digest)
        try:
            if not target.exists():
                self._place(blob.path, target)
            with self._db() as db:
                db.execute(
                    "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.source_digest,
                        key.driver,
                        key.options_key,
                        blob.digest,
                        blob.size,
                        blob.media_type,
                        blob.diff_id,
                        json.dumps(dict(blob.annotations), sort_keys=True),
                        time.time(),
                    ),
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConvertError(f"cannot write layer cache {self.root}: {exc}", transient=True) from None
        return LayerBlob(
            path=target,
            media_type=blob.media_type,
            digest=blob.digest,
            size=blob.size,
            diff_id=blob.diff_id,
            annotations=blob.annotations,
        )

    def _place(self, source: Path, target: Path) -> None:
        try:
            os.link(source, target)
            os.chmod(target, FILE_MODE)
            return
        except FileExistsError:
            return
        except OSError:
            pass
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def record_location(self, digest: str, registry: str, repository: str) -> None:
        """Remember that `digest` exists in `registry/repository` (a mount source for later pushes)."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO locations VALUES (?, ?, ?)", (digest, registry, repository))

    def locations(self, digest: str, registry: str) -> list[str]:
        """Repositories of `registry` that `digest` was pushed to, most recent first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT repository FROM locations WHERE digest=? AND registry=? ORDER BY rowid DESC",
                (digest, registry),
            ).fetchall()
        return [row[0] for row in rows]

    def work_dir(self) -> Path:
        """A fresh private directory on the cache's filesystem for one conversion's spool files."""
        return Path(tempfile.mkdtemp(prefix="convert-", dir=self.tmp_dir))
