"""Names for what `acceld inspect` shows: a layer's format and an image's kind, read from media types
and the annotations each format defines (../shared/docs/formats/*)."""

from __future__ import annotations

from acceld.convert.formats import ESTARGZ_TOC, NYDUS_BLOB, NYDUS_BOOTSTRAP, ZSTD_CHUNKED_TOC
from acceld.oci import mediatypes as mt
from acceld.oci.models import Descriptor, Index, Manifest

NYDUS_BLOB_MEDIA_TYPE = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_REF = "containerd.io/snapshot/nydus-ref"  # zran: the gzip source layer a ref blob indexes
SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
SOCI_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
SOCI_INDEX_DIGEST = "com.amazon.soci.index-digest"

_COMPRESSION_NAMES = {"gzip": "gzip", "zstd": "zstd", "none": "tar"}


def layer_format(layer: Descriptor) -> str:
    """gzip, zstd, tar, eStargz, zstd:chunked, Nydus blob, Nydus zran blob, Nydus bootstrap, SOCI zTOC,
    or the media type itself when it is none of these."""
    annotations = layer.annotations or {}
    if annotations.get(NYDUS_BOOTSTRAP) == "true":
        return "Nydus bootstrap"
    if layer.media_type == NYDUS_BLOB_MEDIA_TYPE or annotations.get(NYDUS_BLOB) == "true":
        return "Nydus zran blob" if NYDUS_REF in annotations else "Nydus blob"
    if ZSTD_CHUNKED_TOC in annotations:
        return "zstd:chunked"
    if ESTARGZ_TOC in annotations:
        return "eStargz"
    if SOCI_LAYER_DIGEST in annotations:
        return "SOCI zTOC"
    compression = mt.layer_compression(layer.media_type)
    return _COMPRESSION_NAMES[compression] if compression else layer.media_type


def image_kind(manifest: Manifest) -> str:
    """What an image manifest is: a SOCI index, an image in a lazy-pulling format, or a plain image."""
    if manifest.config.media_type in (SOCI_INDEX_V1, SOCI_INDEX_V2):
        return f"SOCI index {'v1' if manifest.config.media_type == SOCI_INDEX_V1 else 'v2'}"
    formats = {layer_format(layer) for layer in manifest.layers}
    if "Nydus bootstrap" in formats:
        return "Nydus zran image" if "Nydus zran blob" in formats else "Nydus image"
    for name in ("zstd:chunked", "eStargz"):
        if name in formats:
            return f"{name} image"
    if manifest.artifact_type:
        return f"artifact {manifest.artifact_type}"
    if manifest.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        return f"artifact {manifest.config.media_type}"
    if (manifest.annotations or {}).get(SOCI_INDEX_DIGEST):
        return "image with a SOCI index"
    return "image"


def index_kind(index: Index) -> str:
    """What an index is: a SOCI v2 image (image manifests plus their SOCI indexes) or a plain index."""
    if any(entry.artifact_type in (SOCI_INDEX_V1, SOCI_INDEX_V2) for entry in index.manifests):
        return "SOCI-enabled image index"
    return f"index of {len(index.manifests)} manifests"
