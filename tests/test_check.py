"""`acceld check` as users run it: the real command on converted images in layouts and a registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness.clients import acceld
from harness.images import LayoutImage, blob_path, read_blob_json
from harness.registry import RunningRegistry
from harness.testimages import ImageSet

from acceld.convert.check import compare_trees
from acceld.convert.formats import FORMATS
from acceld.formats.fstree import FsTree, Node

REF_NAME = "org.opencontainers.image.ref.name"


def tagged(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_bytes())
    (entry,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    return str(entry["digest"])


# driver → the tag suffix of its output; every driver whose format `acceld check` reads
SUFFIXES = {"estargz": "-esgz", "nydus": "-nydus", "zstdchunked": "-zstdchunked"}
IMAGES = ("edge", "whiteout", "busybox")


@pytest.fixture(scope="module")
def converted_layout(test_images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test images edge, whiteout and busybox (index) converted by every driver: `<tag><suffix>`."""
    layout = tmp_path_factory.mktemp("check") / "layout"
    shutil.copytree(test_images.layout, layout)
    for driver in SUFFIXES:
        for tag in IMAGES:
            result = acceld(
                "convert", f"oci:{layout}:{tag}", "--driver", driver, cache=layout.parent / "cache"
            )
            assert result.returncode == 0, result.stderr[-2000:]
    return layout


@pytest.fixture
def layout(converted_layout: Path, tmp_path: Path) -> Path:
    """A private copy of `converted_layout` that a test may damage."""
    copy = tmp_path / "layout"
    shutil.copytree(converted_layout, copy)
    return copy


@pytest.mark.parametrize("driver", SUFFIXES)
def test_good_conversions_pass(converted_layout: Path, tmp_path: Path, driver: str) -> None:
    for tag in IMAGES:
        result = acceld("check", f"oci:{converted_layout}:{tag}{SUFFIXES[driver]}", cache=tmp_path / "cache")
        assert result.returncode == 0, result.stdout + result.stderr[-2000:]
        assert "FAILED" not in result.stdout
    busybox = acceld("check", f"oci:{converted_layout}:busybox{SUFFIXES[driver]}", cache=tmp_path / "cache")
    lines = busybox.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["linux/amd64", driver], ["linux/arm64/v8", driver]]
    assert all(": OK, structure valid" in line for line in lines)


@pytest.mark.parametrize(
    ("driver", "layer"),
    [("estargz", 0), ("estargz", -1), ("nydus", 0), ("nydus", -1), ("zstdchunked", 0), ("zstdchunked", -1)],
    ids=[
        "estargz-lower",
        "estargz-upper",
        "nydus-blob",
        "nydus-bootstrap",
        "zstdchunked-lower",
        "zstdchunked-upper",
    ],
)
def test_flipped_byte_in_converted_blob_fails(layout: Path, tmp_path: Path, driver: str, layer: int) -> None:
    tag = f"edge{SUFFIXES[driver]}"
    manifest = read_blob_json(layout, tagged(layout, tag))
    path = blob_path(layout, manifest["layers"][layer]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))
    result = acceld("check", f"oci:{layout}:{tag}", cache=tmp_path / "cache")
    assert result.returncode == 1
    # the format's own reader finds the damage, not only the layout's digest check
    assert "FAILED" in result.stdout and f"{driver}:" in result.stdout


def test_wrong_source_shows_differences(layout: Path, tmp_path: Path) -> None:
    result = acceld(
        "check",
        f"oci:{layout}:whiteout-nydus",
        "--source",
        f"oci:{layout}:edge",
        cache=tmp_path / "cache",
    )
    assert result.returncode == 1
    assert "difference(s) from source" in result.stdout
    assert "missing: " in result.stdout or "unexpected: " in result.stdout


def test_explicit_source_matches_by_platform(layout: Path, tmp_path: Path) -> None:
    result = acceld(
        "check", f"oci:{layout}:busybox-nydus", "--source", f"oci:{layout}:busybox", cache=tmp_path / "cache"
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_unconverted_image_is_not_accepted(layout: Path, tmp_path: Path) -> None:
    result = acceld("check", f"oci:{layout}:busybox-amd64", cache=tmp_path / "cache")
    assert result.returncode == 1
    assert "not a converted image" in result.stdout


def test_check_through_registry(layout: Path, registry_plain: RunningRegistry, tmp_path: Path) -> None:
    target = f"{registry_plain.host}/check/edge:nydus"
    converted = acceld(
        "convert", f"oci:{layout}:edge", target, "-d", "nydus", "--plain-http", cache=tmp_path / "cache"
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert converted.stdout.strip().startswith(f"{target}@sha256:")
    # the subject lives in the source layout, not in the registry: name it
    result = acceld(
        "check", target, "--source", f"oci:{layout}:edge", "--plain-http", cache=tmp_path / "cache"
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    missing_subject = acceld("check", target, "--plain-http", cache=tmp_path / "cache")
    assert missing_subject.returncode == 1
    assert "is not in" in missing_subject.stdout and "--source" in missing_subject.stdout


def test_check_of_a_layout_result_finds_the_source_layout(layout: Path, tmp_path: Path) -> None:
    """The README's `acceld convert oci:./layout:app oci:./out:app`: the result's subject is in ./layout."""
    out = tmp_path / "out"
    converted = acceld(
        "convert", f"oci:{layout}:busybox", f"oci:{out}:app", "-d", "nydus", cache=tmp_path / "c"
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    unnamed = acceld("check", f"oci:{out}:app", cache=tmp_path / "c")
    assert unnamed.returncode == 1
    assert f"is not in oci:{out}" in unnamed.stdout and "--source" in unnamed.stdout
    named = acceld("check", f"oci:{out}:app", "--source", f"oci:{layout}", cache=tmp_path / "c")
    assert named.returncode == 0, named.stdout + named.stderr[-2000:]
    same = acceld(
        "convert", f"oci:{layout}:busybox", f"oci:{layout}:app", "-d", "nydus", cache=tmp_path / "c"
    )
    assert same.returncode == 0, same.stderr[-2000:]
    assert acceld("check", f"oci:{layout}:app", cache=tmp_path / "c").returncode == 0


def test_estargz_mtime_rounding_is_tolerated_but_nothing_more() -> None:
    def tree(mtime: int) -> FsTree:
        result = FsTree()
        result.add("/etc/motd", Node(kind="reg", mode=0o644, size=3, digest="ab", mtime=mtime))
        return result

    source = tree(1_700_000_000)  # a PAX mtime of 1700000000.6 floors to this...
    assert compare_trees(source, tree(1_700_000_001), FORMATS["estargz"]) == []  # ...the TOC rounds up
    assert compare_trees(source, tree(1_700_000_002), FORMATS["estargz"]) == [
        "/etc/motd: mtime 1700000000 != 1700000002"
    ]
    assert compare_trees(source, tree(1_700_000_001), FORMATS["nydus"]) == [
        "/etc/motd: mtime 1700000000 != 1700000001"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("driver", SUFFIXES)
def test_realistic_rootfs_passes(
    rootfs_image: tuple[LayoutImage, dict[str, Path]], tmp_path: Path, driver: str
) -> None:
    """Debian minbase (6000+ paths, sub-second mtimes, hardlinks) plus an upper layer with a whiteout."""
    image, _ = rootfs_image
    layout = tmp_path / "layout"
    shutil.copytree(image.layout, layout)
    converted = acceld(
        "convert", f"oci:{layout}:{image.tag}", "-d", driver, "--no-cache", cache=tmp_path / "cache"
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    result = acceld("check", f"oci:{layout}:{image.tag}{SUFFIXES[driver]}", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert ": OK, structure valid, " in result.stdout
