"""The filesystem model every format check relies on: OCI layer semantics and extracted trees."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness.tars import LONG_DIR, write_edge_lower, write_edge_upper

from acceld.formats.driver import FormatError
from acceld.formats.fstree import diff_trees, tree_from_directory, tree_from_layers


@pytest.fixture(scope="module")
def edge_tars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("edge")
    return write_edge_lower(root / "lower.tar", chunk_size=64 * 1024), write_edge_upper(root / "upper.tar")


def _open_all(*paths: Path) -> list[io.BufferedReader]:
    return [path.open("rb") for path in paths]


def test_upper_layer_applies_whiteouts_opaque_dirs_and_breaks_hardlinks(edge_tars: tuple[Path, Path]) -> None:
    tree = tree_from_layers(_open_all(*edge_tars))
    paths = set(tree.paths())
    for gone in (
        "/whiteout-me",
        "/whiteout-dir",
        "/whiteout-dir/inner",
        "/opaque/lower-only",
        "/opaque/sub",
        "/replace-me/old",
    ):
        assert gone not in paths, gone
    assert {"/opaque/upper-only", "/replace-me/new", "/data/new-in-upper"} <= paths
    assert tree["/opaque"].mode == 0o750
    assert tree["/data/small"].digest == hashlib.sha256(b"small file, modified above\n").hexdigest()
    assert tree["/links/hardlink-other-dir"].digest == hashlib.sha256(b"small file\n").hexdigest()
    assert frozenset({"/data/hardlink-same-dir", "/links/hardlink-other-dir"}) in tree.hardlink_groups()
    assert tree["/etc/hostname"].digest == hashlib.sha256(b"edge-upper\n").hexdigest()


def test_lower_layer_keeps_every_entry_type(edge_tars: tuple[Path, Path]) -> None:
    tree = tree_from_layers(_open_all(edge_tars[0]))
    assert tree["/dev/null"].kind == "char" and tree["/dev/null"].rdev == (1, 3)
    assert tree["/dev/loop7"].kind == "block" and tree["/dev/loop7"].rdev == (7, 7)
    assert tree["/dev/pipe"].kind == "fifo"
    assert tree["/links/dangling"].target == "does/not/exist"
    assert tree["/bin/setuid"].mode == 0o4755 and tree["/tmp"].mode == 0o1777
    assert tree["/xattrs/file"].xattrs == {"user.foo": b"bar", "user.bin": b"\x00\x01\xfe"}
    assert tree["/xattrs"].xattrs == {"user.dir": b"on a directory"}
    assert tree["/data/exact-chunk"].size == 64 * 1024
    assert f"/{LONG_DIR}/file-behind-a-path-longer-than-255-bytes" in tree
    assert "/names/ünïcødé-名前.txt" in tree
    assert frozenset({"/data/small", "/data/hardlink-same-dir", "/links/hardlink-other-dir"}) in (
        tree.hardlink_groups()
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="extracting devices and ownership needs root")
def test_extracted_directory_matches_the_layer_model(edge_tars: tuple[Path, Path], tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    for layer in edge_tars[:1]:
        subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(layer), "-C", str(root)],
            check=True,
        )
    os.chmod(root, 0o755)
    os.utime(root, (0, 0))
    expected = tree_from_layers(_open_all(edge_tars[0]))
    assert diff_trees(expected, tree_from_directory(root)) == []


def test_diff_trees_reports_each_kind_of_difference(edge_tars: tuple[Path, Path]) -> None:
    lower = tree_from_layers(_open_all(edge_tars[0]))
    both = tree_from_layers(_open_all(*edge_tars))
    differences = diff_trees(lower, both)
    assert "missing: /whiteout-me" in differences
    assert "unexpected: /opaque/upper-only" in differences
    assert any(line.startswith("/data/small: digest") for line in differences)
    assert any(line.startswith("hardlinks missing:") for line in differences)
    assert not any(
        line.startswith("/data/small: digest") for line in diff_trees(lower, both, ignore_fields=["digest"])
    )


def test_bad_tar_and_escaping_paths_are_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        tree_from_layers([io.BytesIO(b"not a tar" * 100)])
    escaping = tmp_path / "escape.tar"
    with tarfile.open(escaping, "w") as archive:
        archive.addfile(tarfile.TarInfo("../outside"))
    with pytest.raises(FormatError, match="escapes"):
        tree_from_layers([escaping.open("rb")])
    dangling = tmp_path / "dangling.tar"
    with tarfile.open(dangling, "w") as archive:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.LNKTYPE, "missing"
        archive.addfile(info)
    with pytest.raises(FormatError, match="missing"):
        tree_from_layers([dangling.open("rb")])
    self_replacing = tmp_path / "self.tar"
    with tarfile.open(self_replacing, "w") as archive:
        directory = tarfile.TarInfo("x")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        archive.addfile(tarfile.TarInfo("x/a"), io.BytesIO(b""))
        info = tarfile.TarInfo("x")
        info.type, info.linkname = tarfile.LNKTYPE, "x/a"
        archive.addfile(info)
    with pytest.raises(FormatError, match="own target"):
        tree_from_layers([self_replacing.open("rb")])


def _tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            archive.addfile(info, io.BytesIO(b""))
    return path


@pytest.mark.parametrize("markers", [["a/.wh..wh..opq", ".wh.a"], [".wh.a", "a/.wh..wh..opq"]])
def test_a_whiteout_never_hides_the_directory_its_layer_marks_opaque(
    tmp_path: Path, markers: list[str]
) -> None:
    """Whiteouts hide lower layers only: the layer holds `a` (its opaque marker is in it), in either order."""
    lower = _tar(tmp_path / "lower.tar", ["a/", "a/old"])
    upper = _tar(tmp_path / "upper.tar", markers)
    handles = _open_all(lower, upper)
    try:
        tree = tree_from_layers(handles)
    finally:
        for handle in handles:
            handle.close()
    nodes = tree.nodes
    assert nodes["/a"].kind == "dir" and "/a/old" not in nodes
