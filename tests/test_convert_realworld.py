"""Real-world image shapes through the conversion pipeline: buildkit attestations, nested indexes, every
source layer media type, Docker's repeated empty layer, odd configs, umoci manifests, arm variants,
already-converted sources, registry references with ports and digests, and CLI error paths.

Images are written by hand (independently of acceld) into OCI layouts, some pushed to a real
docker-registry; results are re-read by skopeo (`copy --all` re-verifies every digest) and `acceld check`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard
from harness.clients import skopeo, skopeo_copy
from harness.images import add_blob, canonical_json, init_layout, read_blob_json, tag_in_index
from harness.registry import RunningRegistry

from acceld.config import AcceldConfig, RegistryConfig
from acceld.convert.api import ConversionRequest, ConversionResult, ConvertOptions, convert_image
from acceld.convert.check import check_image
from acceld.errors import AcceldError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
REF_NAME = "org.opencontainers.image.ref.name"
DRIVERS = ("estargz", "nydus", "zstdchunked")
SUFFIX = {"estargz": "-esgz", "nydus": "-nydus", "zstdchunked": "-zstdchunked"}

# Docker's well-known empty layer: gzip of an empty tar (1024 zero bytes), as docker/distribution spells it.
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_GZIP_DIGEST = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


# -- hand-written images ------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted({str(Path(n).parent) for n in files} - {"."}):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def compress(tar: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        return gzip.compress(tar, mtime=0)
    if media_type.endswith("zstd"):
        return zstandard.ZstdCompressor(level=3).compress(tar)
    return tar


class Layer:
    """A layer blob with its media type and diff_id."""

    def __init__(self, tar: bytes, media_type: str = OCI_GZIP, blob: bytes | None = None) -> None:
        self.media_type = media_type
        self.blob = compress(tar, media_type) if blob is None else blob
        self.diff_id = sha(tar)

    @classmethod
    def files(cls, files: dict[str, bytes], media_type: str = OCI_GZIP) -> Layer:
        return cls(make_tar(files), media_type)


def empty_layer() -> Layer:
    return Layer(b"\0" * 1024, DOCKER_GZIP, EMPTY_GZIP_LAYER)


def write_manifest(
    layout: Path,
    layers: Sequence[Layer],
    *,
    tag: str | None = None,
    docker: bool = False,
    arch: str = "amd64",
    variant: str | None = None,
    config: dict[str, Any] | None = None,
    media_type_field: bool = True,
    store_blobs: bool = True,
) -> dict[str, Any]:
    """An image manifest of `layers` in `layout` (tagged if `tag`); returns its descriptor (with platform)."""
    init_layout(layout)
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    descriptors = []
    for layer in layers:
        descriptor = (
            add_blob(layout, layer.blob, layer.media_type)
            if store_blobs
            else {"mediaType": layer.media_type, "digest": sha(layer.blob), "size": len(layer.blob)}
        )
        descriptors.append(descriptor)
    config_doc = config or {
        **platform,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "config": add_blob(layout, canonical_json(config_doc), DOCKER_CONFIG if docker else OCI_CONFIG),
        "layers": descriptors,
    }
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    if media_type_field:
        manifest["mediaType"] = media_type
    descriptor = add_blob(layout, canonical_json(manifest), media_type)
    if tag:
        tag_in_index(layout, descriptor, tag)
    return {**descriptor, "platform": platform}


def write_index(
    layout: Path, entries: Sequence[dict[str, Any]], tag: str, *, docker: bool = False
) -> dict[str, Any]:
    media_type = DOCKER_LIST if docker else OCI_INDEX
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)}
    descriptor = add_blob(layout, canonical_json(index), media_type)
    tag_in_index(layout, descriptor, tag)
    return descriptor


def attestation_for(layout: Path, subject: dict[str, Any]) -> dict[str, Any]:
    """A buildkit attestation manifest (in-toto SBOM layer) for `subject`, as an index entry."""
    statement = canonical_json({"_type": "https://in-toto.io/Statement/v0.1", "predicate": {}})
    config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha(statement)]},
    }
    layer = add_blob(layout, statement, IN_TOTO)
    layer["annotations"] = {"in-toto.io/predicate-type": "https://spdx.dev/Document"}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": add_blob(layout, canonical_json(config), OCI_CONFIG),
        "layers": [layer],
    }
    descriptor = add_blob(layout, canonical_json(manifest), OCI_MANIFEST)
    return {
        **descriptor,
        "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {
            "vnd.docker.reference.digest": subject["digest"],
            "vnd.docker.reference.type": "attestation-manifest",
        },
    }


def small_layer(name: str, media_type: str = OCI_GZIP) -> Layer:
    return Layer.files({f"data/{name}.txt": f"content of {name}\n".encode() * 50}, media_type)


# -- running and judging ------------------------------------------------------------------------


@pytest.fixture
def options(tmp_path: Path) -> ConvertOptions:
    return ConvertOptions(cache_dir=tmp_path / "cache", workers=1)


async def convert(
    source: str,
    options: ConvertOptions,
    driver: str = "estargz",
    *,
    platforms: Sequence[str] | None = None,
    config: AcceldConfig | None = None,
    target: str | None = None,
) -> ConversionResult:
    request = ConversionRequest(source=source, target=target, driver=driver, platforms=platforms)
    return await convert_image(request, config or AcceldConfig(), options=options)


def tags_of(layout: Path) -> list[str]:
    return [m["annotations"][REF_NAME] for m in json.loads((layout / "index.json").read_bytes())["manifests"]]


def tagged(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_bytes())
    (entry,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    return dict(entry)


def manifests_of(layout: Path, digest: str) -> list[dict[str, Any]]:
    document = read_blob_json(layout, digest)
    return (
        [read_blob_json(layout, m["digest"]) for m in document["manifests"]]
        if "manifests" in document
        else [document]
    )


def assert_consistent(layout: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Config diff_ids align with the layers, non-empty history entries count the layers; the config."""
    config = read_blob_json(layout, manifest["config"]["digest"])
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    if config.get("history"):
        assert sum(1 for h in config["history"] if not h.get("empty_layer")) == len(manifest["layers"])
    return config


async def assert_valid(layout: Path, tag: str, tmp_path: Path, *, check: bool = True) -> None:
    """skopeo re-verifies every digest of the result; `acceld check` compares its files with the source."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    skopeo("copy", "--quiet", "--all", f"oci:{layout}:{tag}", f"oci:{tmp_path / 'skopeo-copy'}:x")
    for manifest in manifests_of(layout, tagged(layout, tag)["digest"]):
        assert_consistent(layout, manifest)
    if check:
        results = await check_image(f"oci:{layout}:{tag}", AcceldConfig())
        assert results and all(r.ok for r in results), [(r.problems, r.differences[:5]) for r in results]


def acceld_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "acceld"), *args], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- buildkit attestations, nested indexes, variants --------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
async def test_attestation_manifests_are_left_out_of_the_converted_index(
    tmp_path: Path, options: ConvertOptions, driver: str
) -> None:
    """Decision: attestations describe the source manifests, not the converted ones, so the converted
    index drops them (they stay reachable from the source index)."""
    layout = tmp_path / "layout"
    amd64 = write_manifest(layout, [small_layer("a")])
    arm64 = write_manifest(layout, [small_layer("b")], arch="arm64", variant="v8")
    write_index(layout, [amd64, arm64, attestation_for(layout, amd64), attestation_for(layout, arm64)], "app")
    await convert(f"oci:{layout}:app", options, driver)
    converted = read_blob_json(layout, tagged(layout, f"app{SUFFIX[driver]}")["digest"])
    assert [m["platform"]["architecture"] for m in converted["manifests"]] == ["amd64", "arm64"]
    await assert_valid(layout, f"app{SUFFIX[driver]}", tmp_path)

    await convert(f"oci:{layout}:app", options, driver, platforms=["linux/arm64"], target=f"oci:{layout}:one")
    (child,) = read_blob_json(layout, tagged(layout, "one")["digest"])["manifests"]
    assert child["platform"] == arm64["platform"]


async def test_attestation_only_index_is_a_clear_error(tmp_path: Path, options: ConvertOptions) -> None:
    layout = tmp_path / "layout"
    amd64 = write_manifest(layout, [small_layer("a")])
    write_index(layout, [attestation_for(layout, amd64)], "att")
    with pytest.raises(AcceldError, match="has no image manifest"):
        await convert(f"oci:{layout}:att", options)


async def test_nested_index_is_a_clear_error(tmp_path: Path, options: ConvertOptions) -> None:
    layout = tmp_path / "layout"
    inner = write_index(layout, [write_manifest(layout, [small_layer("a")])], "inner")
    write_index(layout, [inner], "outer")
    with pytest.raises(AcceldError, match="nested index") as caught:
        await convert(f"oci:{layout}:outer", options)
    assert "\n" not in str(caught.value) and inner["digest"] in str(caught.value)
    # the inner index itself converts
    await convert(f"oci:{layout}:inner", options)


async def test_arm_variants_in_a_docker_manifest_list(tmp_path: Path, options: ConvertOptions) -> None:
    layout = tmp_path / "layout"
    v7 = write_manifest(layout, [small_layer("v7", DOCKER_GZIP)], docker=True, arch="arm", variant="v7")
    v8 = write_manifest(layout, [small_layer("v8", DOCKER_GZIP)], docker=True, arch="arm64", variant="v8")
    amd64 = write_manifest(layout, [small_layer("x", DOCKER_GZIP)], docker=True)
    write_index(layout, [amd64, v7, v8], "multi", docker=True)
    for wanted, expected in (
        ("linux/arm64", v8),
        ("linux/arm64/v8", v8),
        ("linux/arm/v7", v7),
        ("linux/arm", v7),
    ):
        await convert(f"oci:{layout}:multi", options, platforms=[wanted], target=f"oci:{layout}:out")
        (child,) = read_blob_json(layout, tagged(layout, "out")["digest"])["manifests"]
        assert child["platform"] == expected["platform"], wanted
        assert read_blob_json(layout, child["digest"])["subject"]["digest"] == expected["digest"]
    with pytest.raises(AcceldError, match="linux/arm/v6"):
        await convert(f"oci:{layout}:multi", options, platforms=["linux/arm/v6"], target=f"oci:{layout}:out")
    await assert_valid(layout, "out", tmp_path)


async def test_index_entries_without_platform_match_by_config(
    tmp_path: Path, options: ConvertOptions
) -> None:
    """OCI index entries may omit `platform`: such an image is selected by its config's platform.
    Decision: artifacts listed in an index (no image config, with or without platform) are left out."""
    layout = tmp_path / "layout"
    amd64 = write_manifest(layout, [small_layer("a")])
    arm64 = write_manifest(layout, [small_layer("b")], arch="arm64")
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": add_blob(layout, b"{}", "application/vnd.oci.empty.v1+json"),
        "layers": [add_blob(layout, b"sbom", "application/spdx+json")],
    }
    unplaced = [{k: e[k] for k in ("mediaType", "digest", "size")} for e in (amd64, arm64)]
    listed = add_blob(layout, canonical_json(artifact), OCI_MANIFEST)
    placed = {**listed, "platform": {"architecture": "arm64", "os": "linux"}}
    write_index(layout, [*unplaced, listed, placed], "bare")
    await convert(f"oci:{layout}:bare", options, "nydus", platforms=["linux/arm64"])
    (child,) = read_blob_json(layout, tagged(layout, "bare-nydus")["digest"])["manifests"]
    assert read_blob_json(layout, child["digest"])["subject"]["digest"] == arm64["digest"]
    await assert_valid(layout, "bare-nydus", tmp_path)


async def test_not_convertible_sources_are_one_line_errors(tmp_path: Path, options: ConvertOptions) -> None:
    layout = tmp_path / "layout"
    write_manifest(layout, [], tag="zero")
    bz2 = Layer(make_tar({"a": b"x"}), "application/vnd.oci.image.layer.v1.tar+bzip2", b"BZh91AY&SY")
    write_manifest(layout, [bz2], tag="bzip2")
    schema1 = {"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": [], "history": []}
    tag_in_index(
        layout,
        add_blob(
            layout, canonical_json(schema1), "application/vnd.docker.distribution.manifest.v1+prettyjws"
        ),
        "schema1",
    )
    chart = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": add_blob(layout, b"{}", "application/vnd.cncf.helm.config.v1+json"),
        "layers": [add_blob(layout, b"chart", "application/vnd.cncf.helm.chart.content.v1.tar+gzip")],
    }
    tag_in_index(layout, add_blob(layout, canonical_json(chart), OCI_MANIFEST), "chart")
    expected = {
        "zero": "has no layers",
        "bzip2": re.escape("unknown layer media type application/vnd.oci.image.layer.v1.tar+bzip2"),
        "schema1": "is not an image or index",
        "chart": "is not a container image",
    }
    for driver in DRIVERS:
        for tag, message in expected.items():
            with pytest.raises(AcceldError, match=message) as caught:
                await convert(f"oci:{layout}:{tag}", options, driver)
            assert "\n" not in str(caught.value)
    assert sorted(tags_of(layout)) == sorted(expected)


# -- layer media types, empty and duplicate layers -----------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
async def test_every_source_layer_media_type(tmp_path: Path, options: ConvertOptions, driver: str) -> None:
    layout = tmp_path / "layout"
    layers = [
        small_layer("plain", OCI_TAR),
        small_layer("gzip", OCI_GZIP),
        small_layer("zstd", OCI_ZSTD),
        small_layer("nondist", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
    ]
    write_manifest(layout, layers, tag="oci")
    docker_layers = [
        small_layer("docker", DOCKER_GZIP),
        small_layer("docker-tar", "application/vnd.docker.image.rootfs.diff.tar"),
        small_layer("foreign", DOCKER_FOREIGN),
    ]
    write_manifest(layout, docker_layers, tag="docker", docker=True)
    for tag, count in (("oci", len(layers)), ("docker", len(docker_layers))):
        result = await convert(f"oci:{layout}:{tag}", options, driver)
        assert result.layers_converted == count
        (manifest,) = manifests_of(layout, result.target_digest)
        assert all(layer["mediaType"].startswith("application/vnd.oci.") for layer in manifest["layers"])
        await assert_valid(layout, f"{tag}{SUFFIX[driver]}", tmp_path / tag)


async def test_foreign_layer_without_its_blob_is_a_clear_error(
    tmp_path: Path, options: ConvertOptions
) -> None:
    """Decision: a foreign layer is converted like any gzip layer when its blob can be read; when it
    cannot (Windows base layers only live at their `urls`), the conversion stops with one line."""
    layout = tmp_path / "layout"
    foreign = small_layer("foreign", DOCKER_FOREIGN)
    write_manifest(layout, [small_layer("a", DOCKER_GZIP)], docker=True, tag="base")
    manifest = write_manifest(layout, [foreign], docker=True, store_blobs=False)
    tag_in_index(layout, {k: manifest[k] for k in ("mediaType", "digest", "size")}, "foreign")
    with pytest.raises(AcceldError, match=sha(foreign.blob)) as caught:
        await convert(f"oci:{layout}:foreign", options)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_docker_empty_layer_repeated(tmp_path: Path, options: ConvertOptions, driver: str) -> None:
    assert sha(EMPTY_GZIP_LAYER) == EMPTY_GZIP_DIGEST
    assert gzip.decompress(EMPTY_GZIP_LAYER) == b"\0" * 1024 and sha(b"\0" * 1024) == EMPTY_TAR_DIFF_ID
    layout = tmp_path / "layout"
    layers = [small_layer("a", DOCKER_GZIP), empty_layer(), small_layer("b", DOCKER_GZIP), empty_layer()]
    write_manifest(layout, layers, tag="img", docker=True)
    result = await convert(f"oci:{layout}:img", options, driver)
    assert result.layers_converted == 3
    (manifest,) = manifests_of(layout, result.target_digest)
    extra = 1 if driver == "nydus" else 0
    assert len(manifest["layers"]) == 4 + extra
    assert manifest["layers"][1] == manifest["layers"][3]
    config = assert_consistent(layout, manifest)
    assert config["rootfs"]["diff_ids"][1] == config["rootfs"]["diff_ids"][3]
    await assert_valid(layout, f"img{SUFFIX[driver]}", tmp_path)


@pytest.mark.parametrize("driver", ["estargz", "nydus", "zstdchunked"])
async def test_byte_identical_layers(tmp_path: Path, options: ConvertOptions, driver: str) -> None:
    layout = tmp_path / "layout"
    same = small_layer("same")
    write_manifest(layout, [same, small_layer("middle"), same], tag="twice")
    result = await convert(f"oci:{layout}:twice", options, driver)
    assert result.layers_converted == 2
    (manifest,) = manifests_of(layout, result.target_digest)
    assert len(manifest["layers"]) == 3 + (1 if driver == "nydus" else 0)
    assert manifest["layers"][0] == manifest["layers"][2]
    await assert_valid(layout, f"twice{SUFFIX[driver]}", tmp_path)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_many_layers(tmp_path: Path, options: ConvertOptions, driver: str) -> None:
    layout = tmp_path / "layout"
    write_manifest(
        layout, [small_layer(f"l{n}", OCI_GZIP if n % 2 else OCI_TAR) for n in range(30)], tag="many"
    )
    result = await convert(f"oci:{layout}:many", options, driver)
    (manifest,) = manifests_of(layout, result.target_digest)
    assert len(manifest["layers"]) == 30 + (1 if driver == "nydus" else 0)
    await assert_valid(layout, f"many{SUFFIX[driver]}", tmp_path)


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
async def test_history_with_empty_layer_entries(tmp_path: Path, options: ConvertOptions, driver: str) -> None:
    layout = tmp_path / "layout"
    layers = [small_layer("a"), small_layer("b")]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created_by": "ADD a"},
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "ADD b"},
            {"created_by": "CMD sh", "empty_layer": True},
        ],
    }
    write_manifest(layout, layers, tag="hist", config=config)
    result = await convert(f"oci:{layout}:hist", options, driver)
    (manifest,) = manifests_of(layout, result.target_digest)
    converted = assert_consistent(layout, manifest)
    assert [h.get("created_by") for h in converted["history"][:4]] == [
        h["created_by"] for h in config["history"]
    ]
    await assert_valid(layout, f"hist{SUFFIX[driver]}", tmp_path)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_config_with_null_and_missing_optional_fields(
    tmp_path: Path, options: ConvertOptions, driver: str
) -> None:
    layout = tmp_path / "layout"
    layer = small_layer("a")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": None,
        "author": None,
        "config": {"Env": None, "Cmd": None, "Entrypoint": None, "Labels": None, "Volumes": None},
        "container_config": None,
        "history": None,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }
    write_manifest(layout, [layer], tag="nulls", config=config)
    bare = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    write_manifest(layout, [layer], tag="bare", config=bare)
    for tag in ("nulls", "bare"):
        result = await convert(f"oci:{layout}:{tag}", options, driver)
        (manifest,) = manifests_of(layout, result.target_digest)
        converted = read_blob_json(layout, manifest["config"]["digest"])
        assert converted["config"] == config["config"] if tag == "nulls" else "config" not in converted
        assert converted.get("history") is None
        await assert_valid(layout, f"{tag}{SUFFIX[driver]}", tmp_path / tag)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_diff_ids_that_do_not_match_the_layers(
    tmp_path: Path, options: ConvertOptions, driver: str
) -> None:
    layout = tmp_path / "layout"
    layers = [small_layer("a"), small_layer("b")]
    wrong = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layers[1].diff_id, layers[0].diff_id]},
    }
    write_manifest(layout, layers, tag="swapped", config=wrong)
    short = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layers[0].diff_id]},
    }
    write_manifest(layout, layers, tag="short", config=short)
    with pytest.raises(AcceldError, match="config says") as caught:
        await convert(f"oci:{layout}:swapped", options, driver)
    assert "\n" not in str(caught.value)
    with pytest.raises(AcceldError, match="2 layers but 1 diff_ids"):
        await convert(f"oci:{layout}:short", options, driver)
    tags = [m["annotations"][REF_NAME] for m in json.loads((layout / "index.json").read_bytes())["manifests"]]
    assert sorted(tags) == ["short", "swapped"]


# -- umoci, already converted sources, overwriting targets --------------------------------------


async def test_umoci_manifests_without_media_type(tmp_path: Path, options: ConvertOptions) -> None:
    layout = tmp_path / "umoci"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:base"], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:base", str(bundle)], check=True)
    (bundle / "rootfs" / "hello.txt").write_text("hello from umoci\n")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:base", str(bundle)], check=True)
    manifest = read_blob_json(layout, tagged(layout, "base")["digest"])
    manifest.pop("mediaType", None)  # older umoci releases never wrote it
    descriptor = add_blob(layout, canonical_json(manifest), OCI_MANIFEST)
    tag_in_index(layout, descriptor, "nomt")
    for driver in DRIVERS:
        await convert(f"oci:{layout}:nomt", options, driver)
        await assert_valid(layout, f"nomt{SUFFIX[driver]}", tmp_path / driver)


@pytest.mark.parametrize("driver", ["estargz", "zstdchunked"])
async def test_source_in_the_target_format_is_refused(
    tmp_path: Path, options: ConvertOptions, driver: str
) -> None:
    """Decision: converting an image into the format it already has would only copy it under a second
    suffix (`-esgz-esgz`): refused in one line, nothing written."""
    layout = tmp_path / "layout"
    write_manifest(layout, [small_layer("a"), small_layer("b")], tag="src")
    await convert(f"oci:{layout}:src", options, driver)
    with pytest.raises(AcceldError, match=f"already in the {driver} format") as caught:
        await convert(f"oci:{layout}:src{SUFFIX[driver]}", options, driver)
    assert "\n" not in str(caught.value)
    assert f"src{SUFFIX[driver]}{SUFFIX[driver]}" not in tags_of(layout)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_nydus_source_is_refused_by_every_driver(
    tmp_path: Path, options: ConvertOptions, driver: str
) -> None:
    """Decision: Nydus blobs are not tar layers; converting a Nydus image is refused in one line."""
    layout = tmp_path / "layout"
    write_manifest(layout, [small_layer("a")], tag="src")
    await convert(f"oci:{layout}:src", options, "nydus")
    with pytest.raises(AcceldError, match="already a Nydus image") as caught:
        await convert(f"oci:{layout}:src-nydus", options, driver)
    assert "\n" not in str(caught.value)
    assert not any(t.endswith(f"-nydus{SUFFIX[driver]}") for t in tags_of(layout))


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("estargz", "nydus"),
        ("estargz", "zstdchunked"),
        ("zstdchunked", "estargz"),
        ("zstdchunked", "nydus"),
    ],
)
async def test_converted_source_into_another_format(
    tmp_path: Path, options: ConvertOptions, first: str, then: str
) -> None:
    """eStargz and zstd:chunked images are valid gzip/zstd images: other drivers convert them."""
    layout = tmp_path / "layout"
    write_manifest(layout, [small_layer("a"), small_layer("b", OCI_TAR)], tag="src")
    converted = await convert(f"oci:{layout}:src", options, first)
    result = await convert(f"oci:{layout}:src{SUFFIX[first]}", options, then)
    (manifest,) = manifests_of(layout, result.target_digest)
    assert manifest["subject"]["digest"] == converted.target_digest
    await assert_valid(layout, f"src{SUFFIX[first]}{SUFFIX[then]}", tmp_path)


async def test_existing_target_tag_is_overwritten_consistently(
    tmp_path: Path, options: ConvertOptions
) -> None:
    layout = tmp_path / "layout"
    write_manifest(layout, [small_layer("a")], tag="app")
    first = await convert(f"oci:{layout}:app", options, "nydus")
    again = await convert(f"oci:{layout}:app", options, "nydus")
    assert again.target_digest == first.target_digest
    write_manifest(layout, [small_layer("a"), small_layer("new")], tag="app")
    changed = await convert(f"oci:{layout}:app", options, "nydus")
    assert changed.target_digest != first.target_digest
    assert tagged(layout, "app-nydus")["digest"] == changed.target_digest
    await assert_valid(layout, "app-nydus", tmp_path)


# -- registries: references with ports and digests ------------------------------------------------


def registry_config(registry: RunningRegistry, host: str) -> AcceldConfig:
    return AcceldConfig(registries={host: RegistryConfig(plain_http=True)})


async def test_registry_reference_with_port_path_tag_and_digest(
    tmp_path: Path, registry_plain: RunningRegistry, options: ConvertOptions
) -> None:
    layout = tmp_path / "layout"
    amd64 = write_manifest(layout, [small_layer("a"), empty_layer(), empty_layer()])
    index = write_index(layout, [amd64, attestation_for(layout, amd64)], "app")
    port = registry_plain.host.rpartition(":")[2]
    host = f"localhost:{port}"
    skopeo_copy(f"oci:{layout}:app", f"docker://{registry_plain.host}/a/b/c:v1", dest_registry=registry_plain)
    config = registry_config(registry_plain, host)
    pinned = await convert(f"{host}/a/b/c:v1@{index['digest']}", options, "nydus", config=config)
    assert pinned.source_digest == index["digest"]
    assert pinned.target == f"{host}/a/b/c:v1-nydus"
    by_digest = await convert(f"{host}/a/b/c@{index['digest']}", options, "zstdchunked", config=config)
    assert by_digest.target == f"{host}/a/b/c@{by_digest.target_digest}"
    out = tmp_path / "out"
    for ref in ("a/b/c:v1-nydus", f"a/b/c@{by_digest.target_digest}"):
        skopeo(
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            f"docker://{registry_plain.host}/{ref}",
            f"oci:{out}:{ref.replace('/', '-').replace('@', '-').replace(':', '-')}",
        )
    results = await check_image(f"{host}/a/b/c:v1-nydus", config)
    assert results and all(r.ok for r in results)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(AcceldError):
        await convert(f"{host}/a/b/c:v1@{wrong}", options, "nydus", config=config)


async def test_registry_umoci_style_manifest_without_media_type(
    tmp_path: Path, registry_token: RunningRegistry, options: ConvertOptions
) -> None:
    layout = tmp_path / "layout"
    write_manifest(
        layout, [small_layer("a", OCI_ZSTD), small_layer("b", OCI_TAR)], tag="nomt", media_type_field=False
    )
    user = next(iter(registry_token.users))
    skopeo_copy(
        f"oci:{layout}:nomt",
        f"docker://{registry_token.host}/{user}/nomt:1",
        dest_registry=registry_token,
        dest_user=user,
    )
    config = AcceldConfig(
        registries={
            registry_token.host: RegistryConfig(
                plain_http=True, username=user, password=registry_token.users[user]
            )
        }
    )
    for driver in DRIVERS:
        result = await convert(f"{registry_token.host}/{user}/nomt:1", options, driver, config=config)
        checks = await check_image(result.target, config)
        assert checks and all(c.ok for c in checks), driver


# -- CLI error paths ---------------------------------------------------------------------------


def test_cli_error_paths(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_manifest(layout, [small_layer("a")], tag="img")
    assert_one_line_error(acceld_cli("convert", f"oci:{tmp_path / 'missing'}:img"), "missing")
    assert_one_line_error(acceld_cli("convert", f"oci:{layout}:nope"), "nope")
    assert_one_line_error(acceld_cli("convert", "--driver", "squashfs", f"oci:{layout}:img"), "squashfs")
    for bad in ("linux", "linux/", "/amd64", "linux/arm64/v8/extra"):
        assert_one_line_error(acceld_cli("convert", "--platform", bad, f"oci:{layout}:img"), "platform")
    # `check` reports per platform on stdout (its verdict format), exit 1, no traceback
    unconverted = acceld_cli("check", f"oci:{layout}:img")
    assert unconverted.returncode == 1 and not unconverted.stderr
    assert unconverted.stdout.splitlines()[1].strip().startswith("not a converted image")
    assert_one_line_error(acceld_cli("check", f"oci:{layout}:nope"), "nope")
