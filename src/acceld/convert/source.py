"""Reading the source: the root manifest or index, the selected platforms, their configs and layers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from acceld.convert.errors import ConvertError
from acceld.formats.driver import SourceLayer
from acceld.oci import mediatypes as mt
from acceld.oci.digest import InvalidDigest, validate_digest
from acceld.oci.models import Descriptor, ImageConfig, Index, Manifest, RawManifest, parse_config
from acceld.oci.platform import Platform
from acceld.registry.store import ImageStore

_IMAGE_CONFIG_TYPES = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})
# buildkit stores attestations as index children with this platform and annotation; they are not
# runnable images and describe the source manifests, so a converted index leaves them out.
_UNKNOWN_OS = "unknown"
_REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"


@dataclass(frozen=True)
class SourceImage:
    """One platform's image: manifest, config and layers (with their diff_ids)."""

    entry: Descriptor  # the index entry (with platform) or the root manifest's descriptor
    raw: RawManifest
    manifest: Manifest
    config: ImageConfig
    layers: tuple[SourceLayer, ...]

    @property
    def platform(self) -> str:
        return str(self.config.platform)


@dataclass(frozen=True)
class SourcePlan:
    root: RawManifest
    index: Index | None  # None when the root is a single image manifest
    images: tuple[SourceImage, ...]


def _wanted(platforms: Sequence[str] | None) -> list[Platform] | None:
    return None if platforms is None else [Platform.parse(p) for p in platforms]


def _matches(wanted: list[Platform] | None, candidate: Platform) -> bool:
    return wanted is None or any(w.matches(candidate) for w in wanted)


async def load_source(store: ImageStore, ref: str, platforms: Sequence[str] | None) -> SourcePlan:
    """The source images to convert; one-line errors for unsupported or empty selections."""
    wanted = _wanted(platforms)
    root = await store.get_manifest(ref)
    if root.is_index:
        index = root.index()
        nested = next((entry for entry in index.manifests if mt.is_index(entry.media_type)), None)
        if nested is not None:
            raise ConvertError(
                f"{store.location}: index {root.digest} contains a nested index {nested.digest}, "
                "which is not supported: convert that index by its digest"
            )
        entries = [
            entry
            for entry in index.manifests
            if mt.is_manifest(entry.media_type)
            and not _is_attestation(entry)
            and (entry.platform is None or _matches(wanted, entry.platform))
        ]
        loaded = await asyncio.gather(*(_load_child(store, entry) for entry in entries))
        # an entry without a platform is matched by its config's
        images = tuple(
            image
            for image in loaded
            if image is not None and _matches(wanted, image.entry.platform or image.config.platform)
        )
        if not images:
            what = f"platform {', '.join(platforms)}" if platforms else "image manifest"
            raise ConvertError(f"{store.location}: index {root.digest} has no {what}")
        return SourcePlan(root, index, images)
    if not root.is_manifest:
        raise ConvertError(f"{store.location}: {root.media_type} ({root.digest}) is not an image or index")
    image = await _load_image(store, root.descriptor(), root)
    if not _matches(wanted, image.config.platform):
        raise ConvertError(
            f"{store.location}: image {root.digest} is {image.platform}, not {', '.join(platforms or ())}"
        )
    return SourcePlan(root, None, (image,))


def _is_attestation(entry: Descriptor) -> bool:
    reference_type = (entry.annotations or {}).get(_REFERENCE_TYPE_ANNOTATION)
    return reference_type is not None or (entry.platform is not None and entry.platform.os == _UNKNOWN_OS)


async def _load_child(store: ImageStore, entry: Descriptor) -> SourceImage | None:
    raw = await store.get_manifest(entry.digest)
    if raw.is_manifest and raw.manifest().config.media_type not in _IMAGE_CONFIG_TYPES:
        return None  # an artifact (signature, SBOM, chart) listed in the index
    return await _load_image(store, entry, raw)


async def _load_image(store: ImageStore, entry: Descriptor, raw: RawManifest) -> SourceImage:
    if not raw.is_manifest:
        raise ConvertError(f"{store.location}: {raw.digest} is a {raw.media_type}, not an image manifest")
    manifest = raw.manifest()
    if manifest.config.media_type not in _IMAGE_CONFIG_TYPES:
        raise ConvertError(
            f"{store.location}: {raw.digest} is not a container image (config {manifest.config.media_type})"
        )
    config = parse_config(await store.get_blob_bytes(manifest.config))
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise ConvertError(
            f"{store.location}: image {raw.digest} has {len(manifest.layers)} layers "
            f"but {len(diff_ids)} diff_ids in its config"
        )
    for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
        try:
            validate_digest(layer.digest)
            validate_digest(diff_id)
        except InvalidDigest as exc:  # layers are verified with these: none may be skipped
            raise ConvertError(f"{store.location}: image {raw.digest}: {exc}") from None
    layers = tuple(
        SourceLayer(
            digest=layer.digest,
            media_type=layer.media_type,
            size=layer.size,
            diff_id=diff_id,
            annotations=dict(layer.annotations or {}),
        )
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True)
    )
    return SourceImage(entry=entry, raw=raw, manifest=manifest, config=config, layers=layers)
