"""Building the converted image's config, manifest and index (always OCI media types)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from acceld.formats.driver import ImageAdditions, LayerBlob
from acceld.oci import mediatypes as mt
from acceld.oci.models import Descriptor, History, ImageConfig, Index, Manifest, RawManifest

# A layer that passes through keeps its bytes, so only its media type's spelling changes.
_DOCKER_TO_OCI_LAYER = {
    mt.DOCKER_LAYER: mt.OCI_LAYER,
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    mt.DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD,
    mt.DOCKER_FOREIGN_LAYER_GZIP: mt.OCI_LAYER_NONDIST_GZIP,
}


# Harbor 2.6/2.7 link an acceleration result to its source through these (later versions use `subject`).
HARBOR_DRIVER_ANNOTATION = "io.goharbor.artifact.v1alpha1.acceleration.driver.name"
HARBOR_SOURCE_DIGEST_ANNOTATION = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"
# A result pushed outside its source repository cannot name it in `subject` (same repository only).
SOURCE_REPOSITORY_ANNOTATION = "io.acceld.source.repository"


def source_annotations(
    driver_name: str, source_digest: str, source_repository: str | None = None
) -> dict[str, str]:
    """Manifest annotations that name the format and the source manifest, for every driver; and the
    source repository (`registry/repository`) for a result that is not linked through `subject`."""
    annotations = {HARBOR_DRIVER_ANNOTATION: driver_name, HARBOR_SOURCE_DIGEST_ANNOTATION: source_digest}
    if source_repository is not None:
        annotations[SOURCE_REPOSITORY_ANNOTATION] = source_repository
    return annotations


def oci_layer_media_type(media_type: str) -> str:
    return _DOCKER_TO_OCI_LAYER.get(media_type, media_type)


def layer_descriptor(blob: LayerBlob) -> Descriptor:
    return Descriptor(
        mediaType=oci_layer_media_type(blob.media_type),
        digest=blob.digest,
        size=blob.size,
        annotations=dict(blob.annotations) or None,
    )


def converted_config(source: ImageConfig, layers: Sequence[LayerBlob], additions: ImageAdditions) -> bytes:
    """The source config with `rootfs.diff_ids` of the converted layers and the driver's history."""
    config = source.model_copy(deep=True)
    config.rootfs.diff_ids = [layer.diff_id for layer in layers]
    if additions.history and config.history:  # no source history: adding some would not cover the layers
        extra = [History.model_validate(dict(entry)) for entry in additions.history]
        config.history = [*(config.history or []), *extra]
    return config.to_json()


def converted_manifest(
    source: Manifest,
    source_descriptor: Descriptor | None,
    config_descriptor: Descriptor,
    layers: Sequence[LayerBlob],
    annotations: Mapping[str, str],
) -> RawManifest:
    """An OCI manifest of `layers` whose `subject` is the source manifest (without its platform);
    none when `source_descriptor` is None (a result outside the source repository)."""
    merged = {**(source.annotations or {}), **annotations}
    manifest = Manifest(
        schemaVersion=2,
        mediaType=mt.OCI_MANIFEST,
        config=config_descriptor,
        layers=[layer_descriptor(layer) for layer in layers],
        subject=_subject(source_descriptor) if source_descriptor else None,
        annotations=merged or None,
    )
    return RawManifest.from_bytes(manifest.to_json(), mt.OCI_MANIFEST)


def _subject(source: Descriptor) -> Descriptor:
    """The `subject` naming a source manifest or index (without its platform or annotations)."""
    return Descriptor(mediaType=source.media_type, digest=source.digest, size=source.size)


def converted_index(
    source: Index,
    source_descriptor: Descriptor | None,
    children: Sequence[tuple[Descriptor, RawManifest]],
    annotations: Mapping[str, str],
) -> RawManifest:
    """An OCI index of the converted children whose `subject` is the source index; each child keeps
    its source entry's platform and annotations (and names its source child as its own subject)."""
    manifests: list[Descriptor] = []
    for source_entry, converted in children:
        extra: dict[str, Any] = {}
        if source_entry.platform is not None:
            extra["platform"] = source_entry.platform
        if source_entry.annotations:
            extra["annotations"] = dict(source_entry.annotations)
        manifests.append(converted.descriptor(**extra))
    merged = {**(source.annotations or {}), **annotations}
    index = Index(
        schemaVersion=2,
        mediaType=mt.OCI_INDEX,
        manifests=manifests,
        subject=_subject(source_descriptor) if source_descriptor else None,
        annotations=merged or None,
    )
    return RawManifest.from_bytes(index.to_json(), mt.OCI_INDEX)
