"""acceld's data and cache directories are private: directories 0700, files 0600, whatever the umask."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from acceld.convert.cache import CacheKey, LayerCache
from acceld.formats.driver import LayerBlob
from acceld.service.config import ServiceConfig
from acceld.service.state import Service
from acceld.service.store import NewTask


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that would leave everything world-readable (and writable)."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_tree(root: Path) -> int:
    """Every directory under `root` is 0700 and every file 0600; returns the number of files."""
    assert mode(root) == 0o700, root
    files = 0
    for directory, dirs, names in os.walk(root):
        for name in dirs:
            assert mode(Path(directory, name)) == 0o700, Path(directory, name)
        for name in names:
            assert mode(Path(directory, name)) == 0o600, Path(directory, name)
            files += 1
    return files


def test_layer_cache_is_private(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    work = cache.work_dir()
    content = b"converted layer"
    (work / "layer").write_bytes(content)
    blob = LayerBlob(
        path=work / "layer",
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        digest="sha256:" + hashlib.sha256(content).hexdigest(),
        size=len(content),
        diff_id="sha256:" + "d" * 64,
    )
    stored = cache.store(CacheKey("sha256:" + "a" * 64, "estargz", ""), blob)
    assert stored.path.read_bytes() == content
    assert assert_private_tree(tmp_path / "cache") >= 2  # the index and the blob at least


def test_service_data_directory_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "acceld.db").touch(mode=0o644)  # left by an older version: tightened
    service = Service(ServiceConfig(data_dir=data))
    try:
        task = NewTask("convert", "r", "h.test", "a/b", "v1", "sha256:" + "b" * 64, "estargz", {}, (), "")
        service.store.enqueue([task], 1)  # writes the database's -wal file
        assert {p.name for p in data.iterdir()} >= {"acceld.db", "acceld.db-wal", "api-token"}
        assert assert_private_tree(data) >= 3
    finally:
        service.store.close()


def test_shared_sticky_directories_are_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    LayerCache(shared)  # e.g. --cache-dir /tmp: what acceld creates inside is private, /tmp is not touched
    assert mode(shared) == 0o1777
    assert mode(shared / "blobs") == 0o700 and mode(shared / "tmp") == 0o700
    assert mode(shared / "index.sqlite") == 0o600
