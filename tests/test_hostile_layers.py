"""Hostile layers (tests/harness/hostiletars.py) through `acceld convert` and `acceld check`, every driver.

Each case must end with one error line naming the limit or the path rule it breaks, within bounded
memory (the whole process tree, sampled from /proc) and bounded temporary disk, and push nothing.
The acceld command runs as a real process tree here (layer workers under a fork server), so the
peaks are those a service worker would see.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import zstandard
from harness.hostiletars import GIB, hostile_layout, toc_bombs
from harness.images import AMD64, OCI_CONFIG, OCI_LAYER, add_blob, canonical_json, tag_in_index
from harness.peaks import Peaks, run_with_peaks

from acceld.formats.estargz.gzip_members import footer as estargz_footer
from acceld.formats.limits import DEFAULT_LIMITS

ESTARGZ_TOC = "containerd.io/snapshot/stargz/toc.digest"

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCELD = str(Path(sys.executable).with_name("acceld"))
DRIVERS = ("estargz", "nydus", "zstdchunked")
SUFFIXES = {"estargz": "-esgz", "nydus": "-nydus", "zstdchunked": "-zstdchunked"}
MAX_RSS = 300 << 20
# Bombs run against a small layer limit so that reaching it is quick; the spool may hold that much.
SMALL_LAYER_LIMIT = 64 << 20
MAX_DISK = SMALL_LAYER_LIMIT + (16 << 20)

# case -> (extra arguments, what the error line must contain)
CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "zstd_bomb": (("--limit", f"max_layer_bytes={SMALL_LAYER_LIMIT}"), "limit max_layer_bytes"),
    "gzip_bomb": (("--limit", f"max_layer_bytes={SMALL_LAYER_LIMIT}"), "limit max_layer_bytes"),
    "gzip_bomb_image": (("--limit", f"max_image_bytes={SMALL_LAYER_LIMIT}"), "limit max_image_bytes"),
    "huge_pax_header": ((), "limit max_header_bytes"),
    "huge_gnu_long_name": ((), "limit max_header_bytes"),
    "huge_sparse_gnu": ((), "limit max_sparse_bytes"),
    "huge_sparse_pax": ((), "limit max_sparse_bytes"),
    "many_files": (("--limit", "max_layer_entries=100000"), "limit max_layer_entries"),
    "many_layers": ((), "limit max_layers"),
    "dotdot_name": ((), "'..' component"),
    "nul_in_pax_path": ((), "contains a NUL byte"),
    "below_symlink": ((), "below the symlink 'lib'"),
    "hardlink_dotdot": ((), "'..' component"),
}


def _tag(case: str) -> str:
    return case.removesuffix("_image")


@pytest.fixture(scope="session")
def hostile() -> Path:
    return hostile_layout(REPO_ROOT / ".cache")


def _env(work: Path) -> dict[str, str]:
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", ""), "TMPDIR": str(tmp), "ACCELD_CACHE_DIR": str(work / "cache")}


def _run(args: list[str], work: Path) -> Peaks:
    env = _env(work)
    return run_with_peaks([ACCELD, *args], env=env, watch=[Path(env["TMPDIR"]), work / "cache"], timeout=600)


def _blobs(layout: Path) -> list[str]:
    return sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())


@pytest.fixture(scope="session")
def converted(hostile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small benign image converted by every driver: the converted side `check` reads first."""
    layout = tmp_path_factory.mktemp("benign") / "layout"
    shutil.copytree(hostile, layout)
    for driver in DRIVERS:
        result = _run(["convert", f"oci:{layout}:benign", "-d", driver], layout.parent)
        assert result.returncode == 0, result.stderr
    return layout


def _one_error(result: Peaks, expected: str) -> None:
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def _bounded(result: Peaks, what: str) -> None:
    assert result.rss_bytes < MAX_RSS, f"{what}: peak RSS {result.rss_bytes >> 20} MiB"
    assert result.disk_bytes < MAX_DISK, f"{what}: peak temporary disk {result.disk_bytes >> 20} MiB"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", CASES)
def test_convert_refuses(case: str, driver: str, hostile: Path, tmp_path: Path) -> None:
    extra, expected = CASES[case]
    before = _blobs(hostile)
    target = tmp_path / "out"
    result = _run(
        ["convert", f"oci:{hostile}:{_tag(case)}", f"oci:{target}:x", "-d", driver, *extra], tmp_path
    )
    _one_error(result, expected)
    _bounded(result, f"convert {case} {driver}")
    assert not target.exists() or not json.loads((target / "index.json").read_bytes())["manifests"]
    assert _blobs(hostile) == before


# Drivers that read the compressed layer themselves (gzip or plain tar layers only).
COMPRESSED_READERS = {"soci": ("-d", "soci", "--min-layer-size", "0"), "zran": ("-d", "nydus", "--oci-ref")}
GZIP_CASES = [case for case in CASES if not case.startswith(("zstd_", "huge_pax", "huge_gnu"))]


@pytest.mark.parametrize("reader", COMPRESSED_READERS)
@pytest.mark.parametrize("case", GZIP_CASES)
def test_compressed_readers_refuse(case: str, reader: str, hostile: Path, tmp_path: Path) -> None:
    """SOCI and Nydus zran inflate the layer themselves; the same limits and path rule hold."""
    extra, expected = CASES[case]
    layout = tmp_path / "layout"
    shutil.copytree(hostile, layout)
    before = _blobs(layout)
    result = _run(["convert", f"oci:{layout}:{_tag(case)}", *COMPRESSED_READERS[reader], *extra], tmp_path)
    _one_error(result, expected)
    _bounded(result, f"convert {case} {reader}")
    assert _blobs(layout) == before


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", CASES)
def test_check_refuses(case: str, driver: str, hostile: Path, converted: Path, tmp_path: Path) -> None:
    """`check` applies the same limits to the source it compares with."""
    extra, expected = CASES[case]
    image = f"oci:{converted}:benign{SUFFIXES[driver]}"
    result = _run(["check", image, "--source", f"oci:{hostile}:{_tag(case)}", *extra], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if expected in line]
    assert len(problems) == 1, result.stdout[-2000:]
    assert "Traceback" not in result.stderr
    _bounded(result, f"check {case} {driver}")


def test_limits_are_named_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for key in DEFAULT_LIMITS.__dataclass_fields__:
        assert f"`limits.{key}`" in readme, key


def _converted_image(
    layout: Path, tag: str, blob: bytes, annotations: dict[str, str], media_type: str
) -> None:
    """An image whose single layer is the hand-made converted blob `blob`."""
    layer = {**add_blob(layout, blob, media_type), "annotations": annotations}
    config = {**AMD64.as_json(), "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": add_blob(layout, canonical_json(config), OCI_CONFIG),
        "layers": [layer],
    }
    tag_in_index(layout, add_blob(layout, canonical_json(manifest), manifest["mediaType"]), tag)


def _skippable(data: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + struct.pack("<I", len(data)) + data


def _zstd_chunked_blob(toc: bytes, declared: int) -> tuple[bytes, dict[str, str]]:
    """A zstd:chunked blob whose TOC frame holds `toc` and whose footer declares `declared` bytes."""
    tar_split = zstandard.ZstdCompressor().compress(b"{}\n")
    tar_split_offset = 8 + len(toc) + 8
    blob = (
        _skippable(toc)
        + _skippable(tar_split)
        + b"\x50\x2a\x4d\x18"
        + struct.pack("<I", 64)
        + struct.pack("<7Q", 8, len(toc), declared, 1, tar_split_offset, len(tar_split), 3)
        + b"GNUlInUx"
    )
    annotations = {
        "io.github.containers.zstd-chunked.manifest-checksum": "sha256:" + hashlib.sha256(toc).hexdigest(),
        "io.github.containers.zstd-chunked.manifest-position": f"8:{len(toc)}:{declared}:1",
        "io.github.containers.zstd-chunked.tarsplit-position": f"{tar_split_offset}:{len(tar_split)}:3",
    }
    return blob, annotations


@pytest.fixture(scope="session")
def toc_bomb_images(hostile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Converted layers whose metadata inflates to 1 GiB from about 1 MB (gzip) or 33 KB (zstd)."""
    layout = tmp_path_factory.mktemp("toc-bombs") / "layout"
    shutil.copytree(hostile, layout)
    gz, zst = toc_bombs(hostile)
    esgz = gz.read_bytes() + estargz_footer(0)
    _converted_image(layout, "esgz-toc", esgz, {ESTARGZ_TOC: "sha256:" + "0" * 64}, OCI_LAYER["gzip"])
    small_declared, declared_size = _zstd_chunked_blob(zst.read_bytes(), 4096)
    _converted_image(layout, "zstd-toc-small", small_declared, declared_size, OCI_LAYER["zstd"])
    huge_declared, declared_size = _zstd_chunked_blob(zst.read_bytes(), GIB)
    _converted_image(layout, "zstd-toc-huge", huge_declared, declared_size, OCI_LAYER["zstd"])
    return layout


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("esgz-toc", "limit max_metadata_bytes"),
        ("zstd-toc-small", "larger uncompressed than the 4096 bytes"),
        ("zstd-toc-huge", "limit max_metadata_bytes"),
    ],
)
def test_check_caps_metadata(tag: str, expected: str, toc_bomb_images: Path, tmp_path: Path) -> None:
    """A converted layer's TOC is inflated only up to its declared size and the metadata limit."""
    layout = toc_bomb_images
    result = _run(["check", f"oci:{layout}:{tag}", "--source", f"oci:{layout}:benign"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if expected in line]) == 1, result.stdout
    assert "Traceback" not in result.stderr
    _bounded(result, f"check {tag}")
