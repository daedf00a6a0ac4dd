"""Real-world tar oddities (tests/harness/oddtars.py) through `acceld convert` and `acceld check`
for every driver, each result also judged by the format's reference reader.

A case either converts to a tree equal to the source's (check exit 0), or — where the target format
or its reference runtime cannot represent the input — fails with one clear line and writes nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness.images import blob_path, build_image, read_blob_json
from harness.oddtars import CASES
from test_nydus_erofs import check_with_fsck
from test_nydus_zran import check_with_fsck as check_zran_with_fsck
from test_nydus_zran import write_devices as write_zran_devices
from typer.testing import CliRunner, Result

from acceld.cli import app
from acceld.formats.driver import LayerBlob

REF_NAME = "org.opencontainers.image.ref.name"
SUFFIXES = {
    "estargz": "-esgz",
    "nydus": "-nydus",
    "nydus-oci-ref": "-nydus-oci-ref",
    "zstdchunked": "-zstdchunked",
}
DRIVER_ARGS = {"nydus-oci-ref": ["-d", "nydus", "--oci-ref"]}
ESTARGZ_TOC = "containerd.io/snapshot/stargz/toc.digest"

# (case, driver) -> the part of the one-line error the conversion must fail with, and why.
ALL = tuple(SUFFIXES)
REFUSED: dict[tuple[str, str], str] = {
    # Nydus stores sparse files expanded (as runtimes extract them). eStargz and zstd:chunked keep
    # the tar's own bytes and their TOCs have no sparse map (the Go estargz builder and
    # containers/storage's compressor have no sparse support either).
    # A zran image references the layer's own bytes too, and a sparse file's holes are not there.
    **{
        (sparse, d): "sparse"
        for sparse in ("gnu_tar_sparse_gnu", "gnu_tar_sparse_pax")
        for d in ("estargz", "zstdchunked", "nydus-oci-ref")
    },
    # containers/storage's compressor has no TOC type for a 'g' entry and tar-split must keep every
    # byte of the layer; eStargz drops a comment-only global header (runtimes ignore it), nydus too.
    ("git_archive_global_header", "zstdchunked"): "PAX global headers",
    # The TOCs are JSON: invalid UTF-8 would turn into U+FFFD, so the lazily pulled tree would have
    # other names (containers/storage even refuses such a layer: TOC and tar-split disagree).
    ("latin1_names", "estargz"): "not valid UTF-8",
    ("latin1_names", "zstdchunked"): "not valid UTF-8",
    # The eStargz reference verifier resolves a hardlink only to a non-hardlink TOC entry.
    ("hardlink_chain_across_directories", "estargz"): "itself a hardlink",
    # RAFS keeps mtime as an unsigned 64-bit number (nydus-image reads it as u64).
    ("negative_mtime", "nydus"): "out of the range RAFS can store",
    ("negative_mtime", "nydus-oci-ref"): "out of the range RAFS can store",
    # containers/storage refuses a tar-split with two entries for one path.
    ("duplicate_entries_in_one_layer", "zstdchunked"): "two entries",
}


def acceld(*args: str, cache: Path) -> Result:
    """The `acceld` command, run in this process (two interpreter starts per case cost more than
    every conversion here); an uncaught exception fails the test like a traceback would."""
    result = CliRunner().invoke(app, list(args), env={"ACCELD_CACHE_DIR": str(cache)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"acceld {args[0]} raised") from result.exception
    return result


def tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_bytes())
    return {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]}


def verify_estargz(esgz: Path, layout: Path, manifest: dict[str, object]) -> None:
    for layer in manifest["layers"]:  # type: ignore[attr-defined]
        toc = layer["annotations"][ESTARGZ_TOC]
        result = subprocess.run(
            [str(esgz), "verify", str(blob_path(layout, layer["digest"])), toc],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def verify_nydus(layout: Path, manifest: dict[str, object], tars: list[Path], workdir: Path) -> None:
    *blobs, bootstrap = manifest["layers"]  # type: ignore[attr-defined]
    with tarfile.open(blob_path(layout, bootstrap["digest"]), "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot = workdir / "image.boot"
        boot.write_bytes(member.read())
    files = {b["digest"].removeprefix("sha256:"): blob_path(layout, b["digest"]) for b in blobs}
    check_with_fsck(boot, files, tars, workdir)


def verify_nydus_zran(layout: Path, manifest: dict[str, object], tars: list[Path], workdir: Path) -> None:
    """Devices sliced from the straight decompression of the gzip layers, then fsck.erofs."""
    *refs, bootstrap = manifest["layers"]  # type: ignore[attr-defined]
    with tarfile.open(blob_path(layout, bootstrap["digest"]), "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot = workdir / "image.boot"
        boot.write_bytes(member.read())
    blobs = [
        LayerBlob(blob_path(layout, r["digest"]), r["mediaType"], r["digest"], r["size"], r["digest"])
        for r in refs
    ]
    gzips = [blob_path(layout, r["annotations"]["containerd.io/snapshot/nydus-ref"]) for r in refs]
    check_zran_with_fsck(boot, write_zran_devices(boot, blobs, gzips, workdir), tars, workdir)


def verify_zstdchunked(layout: Path, manifest: dict[str, object], tars: list[Path]) -> None:
    for layer, tar in zip(manifest["layers"], tars, strict=True):  # type: ignore[call-overload]
        out = subprocess.run(["zstd", "-dc", str(blob_path(layout, layer["digest"]))], capture_output=True)
        assert out.returncode == 0 and out.stdout == tar.read_bytes(), f"{tar.name}: zstd -dc differs"


@pytest.mark.parametrize("driver", SUFFIXES)
@pytest.mark.parametrize("name", CASES)
def test_odd_layer(name: str, driver: str, tmp_path: Path, esgz: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    try:
        tars = CASES[name](sources)
    except FileNotFoundError as exc:
        pytest.skip(f"tool not installed: {exc}")
    layout = tmp_path / "layout"
    build_image(layout, tars, "odd")
    before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    driver_args = DRIVER_ARGS.get(driver, ["-d", driver])
    converted = acceld("convert", f"oci:{layout}:odd", *driver_args, "--no-cache", cache=tmp_path / "cache")
    refused = REFUSED.get((name, driver))
    if refused is not None:
        assert converted.exit_code != 0
        errors = [line for line in converted.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and refused in errors[0], converted.stderr
        assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == before
        assert set(tags(layout)) == {"odd"}
        return
    assert converted.exit_code == 0, converted.stderr[-3000:]
    tag = "odd" + SUFFIXES[driver]
    checked = acceld("check", f"oci:{layout}:{tag}", cache=tmp_path / "cache")
    assert checked.exit_code == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    manifest = read_blob_json(layout, tags(layout)[tag])
    if driver == "estargz":
        verify_estargz(esgz, layout, manifest)
    elif driver == "nydus":
        work = tmp_path / "fsck"
        work.mkdir()
        verify_nydus(layout, manifest, tars, work)
    elif driver == "nydus-oci-ref":
        work = tmp_path / "fsck"
        work.mkdir()
        verify_nydus_zran(layout, manifest, tars, work)
    else:
        verify_zstdchunked(layout, manifest, tars)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
