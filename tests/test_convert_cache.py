"""The layer cache on its own: SQLite index plus blob files, shared by separate cache objects."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from acceld.convert.cache import CacheKey, LayerCache, default_cache_dir
from acceld.formats.driver import LayerBlob

KEY = CacheKey("sha256:" + "a" * 64, "estargz", "estargz:{}")


def converted_blob(directory: Path, content: bytes) -> LayerBlob:
    path = directory / "converted"
    path.write_bytes(content)
    return LayerBlob(
        path=path,
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        digest="sha256:" + hashlib.sha256(content).hexdigest(),
        size=len(content),
        diff_id="sha256:" + "d" * 64,
        annotations={"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "e" * 64},
    )


def test_stored_layer_is_found_by_another_cache_object(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    work = cache.work_dir()
    stored = cache.store(KEY, converted_blob(work, b"converted bytes"))
    assert stored.path == cache.blob_path(stored.digest) and stored.path.read_bytes() == b"converted bytes"
    (work / "converted").unlink()  # the conversion's workspace goes away; the cache keeps its copy

    found = LayerCache(tmp_path / "cache").lookup(KEY)
    assert found == stored
    assert (
        LayerCache(tmp_path / "cache").lookup(CacheKey(KEY.source_digest, "nydus", KEY.options_key)) is None
    )
    assert LayerCache(tmp_path / "cache").lookup(CacheKey(KEY.source_digest, KEY.driver, "other")) is None


def test_entry_without_its_blob_is_forgotten(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    stored = cache.store(KEY, converted_blob(cache.work_dir(), b"x" * 100))
    stored.path.write_bytes(b"x" * 99)  # truncated on disk
    assert cache.lookup(KEY) is None
    stored.path.unlink()
    assert cache.lookup(KEY) is None


def test_locations_are_per_registry_newest_first(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    cache.record_location("sha256:" + "b" * 64, "reg.example:5000", "team/a")
    cache.record_location("sha256:" + "b" * 64, "reg.example:5000", "team/b")
    cache.record_location("sha256:" + "b" * 64, "other.example", "team/c")
    cache.record_location("sha256:" + "b" * 64, "reg.example:5000", "team/a")
    assert cache.locations("sha256:" + "b" * 64, "reg.example:5000") == ["team/b", "team/a"]
    assert cache.locations("sha256:" + "c" * 64, "reg.example:5000") == []


def test_work_directories_of_killed_conversions_are_removed_after_a_day(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    fresh, stale = cache.work_dir(), cache.work_dir()
    (stale / "spool").write_bytes(b"left behind")
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    LayerCache(tmp_path / "cache")
    assert fresh.is_dir() and not stale.exists()


def test_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACCELD_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("ACCELD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "acceld"
