"""Paths across layers (harness/crosslayer.py), every driver, `acceld convert` and `acceld check`.

An upper layer's `lib/x` below a lower layer's symlink `lib` (relative, absolute or `..`-escaping)
makes `lib` a directory, as stacked overlayfs layers do (so does a whiteout below it: runtimes
create a whiteout's parent directories): every driver converts it and `check` agrees, and the real
readers (Go `esgz verify`, fsck.erofs) accept the result. A hardlink to a
lower layer's file cannot be unpacked by a runtime: every driver refuses it with the same line.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from harness.clients import acceld
from harness.crosslayer import CASES, cross_layer_layout
from harness.images import blob_path, read_blob_json
from test_nydus_erofs import check_with_fsck, expected_tree

REF_NAME = "org.opencontainers.image.ref.name"
# driver -> (convert arguments, tag of the result); SOCI and Nydus zran write beside the source
DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "estargz": (("-d", "estargz"), "-esgz"),
    "zstdchunked": (("-d", "zstdchunked"), "-zstdchunked"),
    "nydus": (("-d", "nydus"), "-nydus"),
    "soci": (("-d", "soci", "--min-layer-size", "0"), "-soci"),
    "zran": (("-d", "nydus", "--oci-ref"), "-nydus-oci-ref"),
}
# the symlink's target does not matter to a whiteout or a hardlink: one target is enough for them
MATRIX = [case for case in CASES if case.startswith("relative-") or case.endswith(("-file", "-dir"))]
REFUSED = {
    "relative-hardlink": "hardlink 'z' points to 'lib/y', which is not a file earlier in the same layer"
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """(layout, stderr of convert) per driver: every case converted by that driver in its own layout."""
    root = tmp_path_factory.mktemp("cross-layer")
    source = cross_layer_layout(root / "source")
    results = {}
    for driver, (args, _) in DRIVERS.items():
        layout = root / driver
        shutil.copytree(source, layout)
        stderr = ""
        for case in MATRIX:
            result = acceld("convert", f"oci:{layout}:{case}", *args, cache=root / "cache")
            stderr += f"[{case}] {result.returncode}\n{result.stderr}"
        results[driver] = (layout, stderr)
    return results


def _tagged(layout: Path, tag: str) -> dict[str, object] | None:
    index = json.loads((layout / "index.json").read_bytes())
    found = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    return found[0] if found else None


def _convert_output(stderr: str, case: str) -> tuple[int, list[str]]:
    section = stderr.split(f"[{case}] ", 1)[1].split("\n[", 1)[0]
    code, _, rest = section.partition("\n")
    return int(code), rest.splitlines()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", MATRIX)
def test_convert_and_check_agree(case: str, driver: str, converted: dict[str, tuple[Path, str]]) -> None:
    layout, stderr = converted[driver]
    code, lines = _convert_output(stderr, case)
    tag = case + DRIVERS[driver][1]
    if case in REFUSED:
        errors = [line for line in lines if line.startswith("error:")]
        assert code != 0 and len(errors) == 1 and REFUSED[case] in errors[0], lines
        assert not any("Traceback" in line for line in lines)
        assert _tagged(layout, tag) is None
        return
    assert code == 0, lines
    assert _tagged(layout, tag) is not None
    result = acceld("check", f"oci:{layout}:{tag}", "--source", f"oci:{layout}:{case}", cache=layout / "c")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert ": OK" in result.stdout


@pytest.mark.parametrize("case", REFUSED)
def test_check_refuses_the_source_alike(case: str, converted: dict[str, tuple[Path, str]]) -> None:
    layout, _ = converted["estargz"]
    image = f"oci:{layout}:relative-file-esgz"
    result = acceld("check", image, "--source", f"oci:{layout}:{case}", cache=layout / "c")
    assert result.returncode == 1, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if REFUSED[case] in line]) == 1, result.stdout
    assert "Traceback" not in result.stderr


def _source_tars(layout: Path, case: str, workdir: Path) -> list[Path]:
    tars = []
    for n, layer in enumerate(_layers(layout, case)):
        tar = workdir / f"layer{n}.tar"
        tar.write_bytes(gzip.decompress(blob_path(layout, str(layer["digest"])).read_bytes()))
        tars.append(tar)
    return tars


@pytest.mark.parametrize("case", [case for case in MATRIX if case not in REFUSED])
def test_stacked_layers_hide_the_lower_symlink(
    case: str, converted: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """The tree `check` compares with: `lib` is a directory (empty under a whiteout), `usr/lib` intact."""
    layout, _ = converted["estargz"]
    tree = expected_tree(_source_tars(layout, case, tmp_path))
    assert tree["/lib"].kind == "dir" and tree["/usr/lib/y"].kind == "reg"
    below = [path for path in tree.paths() if path.startswith("/lib/")]
    assert below == ([] if case.endswith(("-whiteout", "-opaque")) else ["/lib/x"])
    assert tree["/lib"].mode == (0o750 if case.endswith("-dir") else 0o755)


def _layers(layout: Path, tag: str) -> list[dict[str, object]]:
    descriptor = _tagged(layout, tag)
    assert descriptor is not None
    return list(read_blob_json(layout, str(descriptor["digest"]))["layers"])


@pytest.mark.parametrize("case", [case for case in MATRIX if case not in REFUSED])
def test_estargz_layers_pass_the_go_verifier(
    case: str, converted: dict[str, tuple[Path, str]], esgz: Path
) -> None:
    layout, _ = converted["estargz"]
    for layer in _layers(layout, f"{case}-esgz"):
        toc = layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"]  # type: ignore[index]
        command = [str(esgz), "verify", str(blob_path(layout, str(layer["digest"]))), toc]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", [case for case in MATRIX if case not in REFUSED])
def test_nydus_bootstrap_extracts_the_overlay_tree(
    case: str, converted: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """fsck.erofs extracts the tree the stacked source layers give (harness expected_tree)."""
    layout, _ = converted["nydus"]
    *blobs, bootstrap = _layers(layout, f"{case}-nydus")
    boot = tmp_path / "image.boot"
    with tarfile.open(blob_path(layout, str(bootstrap["digest"])), "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot.write_bytes(member.read())
    blob_files = {
        str(b["digest"]).removeprefix("sha256:"): blob_path(layout, str(b["digest"])) for b in blobs
    }
    check_with_fsck(boot, blob_files, _source_tars(layout, case, tmp_path), tmp_path)
