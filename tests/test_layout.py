"""OCI image layouts as image stores: reading layouts other tools wrote, writing ones they read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from harness.clients import skopeo
from harness.testimages import ImageSet

from acceld.oci import mediatypes as mt
from acceld.oci.digest import DigestMismatch, sha256_digest
from acceld.oci.models import Descriptor, RawManifest
from acceld.oci.platform import Platform
from acceld.registry.copy import PlatformNotFound, copy_image
from acceld.registry.errors import NotFound
from acceld.registry.layout import REF_NAME, LayoutError, OCILayout


def blob(data: bytes, media_type: str) -> Descriptor:
    return Descriptor(mediaType=media_type, digest=sha256_digest(data), size=len(data))


async def test_reads_harness_layout(test_images: ImageSet) -> None:
    layout = OCILayout.open(test_images.layout)
    tags = await layout.list_tags()
    assert {"busybox", "docker", "busybox-amd64", "docker-amd64"} <= set(tags)
    for image in (test_images.busybox_index, test_images.docker_list, test_images.docker_amd64):
        raw = await layout.get_manifest(image.tag)
        assert (raw.digest, raw.media_type, len(raw.data)) == (image.digest, image.media_type, image.size)
        assert (await layout.get_manifest(image.digest)).data == raw.data
    manifest = (await layout.get_manifest(test_images.busybox_amd64.tag)).manifest()
    layer = manifest.layers[0]
    size = sum([len(chunk) async for chunk in layout.blob_chunks(layer)])
    assert size == layer.size
    with pytest.raises(LayoutError, match="name one with oci:PATH:TAG"):
        layout.default_ref()
    with pytest.raises(NotFound, match="tag missing not found"):
        await layout.get_manifest("missing")


async def test_copy_into_new_layout_is_readable_by_skopeo(test_images: ImageSet, tmp_path: Path) -> None:
    src = OCILayout.open(test_images.layout)
    dst = OCILayout.open(tmp_path / "out", create=True)
    result = await copy_image(src, "busybox", dst, "multi", all_platforms=True)
    assert result.digest == test_images.busybox_index.digest
    assert (await dst.get_manifest("multi")).digest == test_images.busybox_index.digest
    assert json.loads((tmp_path / "out" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}

    # One platform out of the index: that platform's manifest, digest unchanged.
    arm = await copy_image(src, "busybox", dst, "arm", platforms=[Platform.parse("linux/arm64")])
    assert arm.digest == test_images.busybox_arm64.digest
    with pytest.raises(PlatformNotFound):
        await copy_image(src, "busybox", dst, "s390x", platforms=[Platform.parse("linux/s390x")])

    # skopeo reads (and digest-checks) every blob acceld wrote.
    skopeo(
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        f"oci:{tmp_path / 'out'}:multi",
        f"oci:{tmp_path / 'check'}:multi",
    )
    index = json.loads((tmp_path / "check" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == test_images.busybox_index.digest
    raw = skopeo("inspect", "--raw", f"oci:{tmp_path / 'out'}:arm").stdout
    assert sha256_digest(raw) == test_images.busybox_arm64.digest


async def test_tags_referrers_and_default_ref(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    config, layer = b"{}", os.urandom(1000)
    await layout.put_blob(blob(config, mt.OCI_CONFIG), config)
    await layout.put_blob(blob(layer, mt.OCI_LAYER), layer)
    first = RawManifest.from_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": blob(config, mt.OCI_CONFIG).to_dict(),
                "layers": [blob(layer, mt.OCI_LAYER).to_dict()],
            }
        ).encode()
    )
    second = RawManifest.from_bytes(first.data + b" ")
    await layout.put_manifest(first, "v1")
    assert layout.default_ref() == first.digest
    await layout.put_manifest(second, "v1")  # re-tagging replaces the entry
    assert await layout.list_tags() == ["v1"]
    assert (await layout.get_manifest("v1")).digest == second.digest
    await layout.put_manifest(first)  # by digest only: a blob, not an index.json entry
    assert [m.digest for m in layout.read_index().manifests] == [second.digest]

    referrer = RawManifest.from_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": blob(config, mt.OCI_EMPTY).to_dict(),
                "layers": [],
                "subject": second.descriptor().to_dict(),
            }
        ).encode()
    )
    await layout.put_blob(blob(config, mt.OCI_EMPTY), config)
    await layout.put_manifest(referrer)
    found = await layout.referrers(second.digest)
    assert [(d.digest, d.artifact_type) for d in found] == [(referrer.digest, mt.OCI_EMPTY)]
    assert await layout.referrers(second.digest, "application/other") == []
    assert await layout.referrers(first.digest) == []
    entry = layout.read_index().manifests[0]
    assert entry.annotations == {REF_NAME: "v1"}


async def test_integrity_errors(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    data = os.urandom(100)
    desc = blob(data, mt.OCI_LAYER)
    with pytest.raises(DigestMismatch):
        await layout.put_blob(blob(b"other", mt.OCI_LAYER), data)
    assert not list((tmp_path / "l" / "blobs" / "sha256").iterdir())  # no partial file left behind
    await layout.put_blob(desc, data)
    layout.blob_path(desc.digest).write_bytes(b"x" + data[1:])
    with pytest.raises(DigestMismatch):
        [chunk async for chunk in layout.blob_chunks(desc)]
    with pytest.raises(NotFound):
        [chunk async for chunk in layout.blob_chunks(blob(b"absent", mt.OCI_LAYER))]

    # A copy trusts the source's verification (no second hash) yet still refuses the corrupt blob.
    manifest = RawManifest.from_bytes(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": blob(b"{}", mt.OCI_CONFIG).to_dict(),
                "layers": [desc.to_dict()],
            }
        ).encode()
    )
    await layout.put_blob(blob(b"{}", mt.OCI_CONFIG), b"{}")
    await layout.put_manifest(manifest, "corrupt")
    target = OCILayout.open(tmp_path / "copy", create=True)
    with pytest.raises(DigestMismatch):
        await copy_image(layout, "corrupt", target, "corrupt")
    assert not await target.has_blob(desc.digest)
    assert not [p for p in (tmp_path / "copy" / "blobs" / "sha256").iterdir() if p.name.startswith(".tmp")]


def test_open_requires_a_layout(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        OCILayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match="unsupported"):
        OCILayout.open(tmp_path)
    shutil.rmtree(tmp_path)
    assert OCILayout.open(tmp_path, create=True).read_index().manifests == []
