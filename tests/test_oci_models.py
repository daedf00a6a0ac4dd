"""OCI/Docker models: unknown fields kept, raw bytes preserved, media types, digests, platforms."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acceld.oci import mediatypes as mt
from acceld.oci.digest import Digester, DigestMismatch, InvalidDigest, is_digest, sha256_digest, verify_bytes
from acceld.oci.models import Descriptor, Index, InvalidManifest, Manifest, RawManifest, parse_config
from acceld.oci.platform import InvalidPlatform, Platform

CONFIG = {"mediaType": mt.OCI_CONFIG, "digest": sha256_digest(b"{}"), "size": 2}
LAYER = {"mediaType": mt.OCI_LAYER_GZIP, "digest": sha256_digest(b"x"), "size": 1, "x-extra": [1, 2]}


def test_raw_manifest_keeps_bytes_and_digest() -> None:
    # Pretty-printed, unusual key order: re-serialising would change the digest.
    data = json.dumps(
        {
            "layers": [LAYER],
            "config": CONFIG,
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "vendor.field": {"a": 1},
        },
        indent=3,
    ).encode()
    raw = RawManifest.from_bytes(data, "application/octet-stream")
    assert raw.data is data
    assert raw.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert raw.media_type == mt.OCI_MANIFEST
    assert raw.descriptor().size == len(data)
    manifest = raw.manifest()
    assert manifest.layers[0].model_extra == {"x-extra": [1, 2]}
    reparsed = json.loads(manifest.to_json())
    assert reparsed["vendor.field"] == {"a": 1}
    assert reparsed["layers"][0]["x-extra"] == [1, 2]
    assert reparsed == json.loads(data)


def test_media_type_detection_without_mediatype_field() -> None:
    # umoci writes manifests without a top-level mediaType.
    assert RawManifest.from_bytes(json.dumps({"schemaVersion": 2, "config": CONFIG}).encode()).is_manifest
    index = RawManifest.from_bytes(json.dumps({"schemaVersion": 2, "manifests": []}).encode())
    assert index.is_index and index.index().manifests == []
    docker = RawManifest.from_bytes(b'{"schemaVersion":2,"config":{}}', mt.DOCKER_MANIFEST)
    assert docker.media_type == mt.DOCKER_MANIFEST
    assert RawManifest.from_bytes(b'{"schemaVersion":1}').media_type == mt.DOCKER_SCHEMA1_MANIFEST


def test_index_with_platforms_and_subject() -> None:
    child = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": sha256_digest(b"m"),
        "size": 1,
        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8", "os.features": ["f"]},
    }
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": sha256_digest(b"s"), "size": 1}
    raw = RawManifest.from_bytes(
        json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child], "subject": subject}
        ).encode()
    )
    index = raw.index()
    assert isinstance(index, Index)
    platform = index.manifests[0].platform
    assert platform is not None and platform.os_features == ["f"] and str(platform) == "linux/arm64/v8"
    assert raw.subject() == Descriptor.model_validate(subject)
    assert json.loads(index.to_json())["manifests"][0]["platform"]["os.features"] == ["f"]
    with pytest.raises(InvalidManifest):
        raw.manifest()


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"schemaVersion":2,"config":{"digest":1}}'])
def test_invalid_manifest_is_a_one_line_error(data: bytes) -> None:
    with pytest.raises(InvalidManifest) as excinfo:
        RawManifest.from_bytes(data, mt.OCI_MANIFEST).parse()
    assert "\n" not in str(excinfo.value)


def test_image_config() -> None:
    config = parse_config(
        json.dumps(
            {
                "architecture": "arm64",
                "os": "linux",
                "variant": "v8",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"t")]},
                "history": [{"created_by": "x", "empty_layer": True, "vendor": 1}],
                "extra": True,
            }
        ).encode()
    )
    assert config.rootfs.diff_ids == [sha256_digest(b"t")]
    assert str(config.platform) == "linux/arm64/v8"
    assert config.history is not None and config.history[0].empty_layer
    assert json.loads(config.to_json())["history"][0]["vendor"] == 1
    with pytest.raises(InvalidManifest):
        parse_config(b"{")


def test_manifest_model_builds_valid_json() -> None:
    manifest = Manifest(mediaType=mt.OCI_MANIFEST, config=Descriptor.model_validate(CONFIG), layers=[])
    assert json.loads(manifest.to_json()) == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": CONFIG,
        "layers": [],
    }


def test_media_type_helpers() -> None:
    assert mt.layer_compression(mt.OCI_LAYER_ZSTD) == "zstd"
    assert mt.layer_compression(mt.DOCKER_LAYER_GZIP) == "gzip"
    assert mt.layer_compression(mt.OCI_LAYER) == "none"
    assert mt.layer_compression(mt.OCI_CONFIG) is None
    assert mt.is_index(mt.DOCKER_MANIFEST_LIST) and mt.is_manifest(mt.DOCKER_MANIFEST)
    assert set(mt.MANIFEST_ACCEPT) == mt.MANIFEST_TYPES | mt.INDEX_TYPES


def test_digests() -> None:
    assert is_digest(sha256_digest(b""))
    assert not is_digest("sha256:ABC")
    assert not is_digest("sha256:" + "A" * 64)
    assert is_digest("sha512:" + "0" * 128)
    with pytest.raises(InvalidDigest):
        Digester.for_digest("md5:" + "0" * 32)
    verify_bytes(b"abc", sha256_digest(b"abc"), 3)
    with pytest.raises(DigestMismatch):
        verify_bytes(b"abc", sha256_digest(b"abd"))
    with pytest.raises(DigestMismatch):
        verify_bytes(b"abc", sha256_digest(b"abc"), 4)


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_incremental_digest_equals_one_shot(chunks: list[bytes]) -> None:
    digester = Digester()
    for chunk in chunks:
        digester.update(chunk)
    assert digester.digest == sha256_digest(b"".join(chunks))
    assert digester.size == sum(map(len, chunks))


@pytest.mark.parametrize(
    ("wanted", "candidate", "matches"),
    [
        ("linux/amd64", {"os": "linux", "architecture": "amd64"}, True),
        ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),
        ("linux/arm64/v8", {"os": "linux", "architecture": "arm64"}, True),
        ("linux/arm64/v8", {"os": "linux", "architecture": "aarch64"}, True),
        ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "v6"}, False),
        ("linux/arm/v7", {"os": "linux", "architecture": "arm"}, True),
        ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
        ("linux/amd64", {"os": "linux", "architecture": "arm64"}, False),
    ],
)
def test_platform_matching(wanted: str, candidate: dict[str, str], matches: bool) -> None:
    assert Platform.parse(wanted).matches(Platform.model_validate(candidate)) is matches


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_invalid_platform(text: str) -> None:
    with pytest.raises(InvalidPlatform):
        Platform.parse(text)
