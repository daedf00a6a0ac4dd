"""`acceld check` for SOCI: the index manifest, every zTOC against its layer, and the layers' origin.

v2: the image manifest names its SOCI index (`com.amazon.soci.index-digest`); v1: the index is a
referrer of the image manifest (referrers API or fallback tag). The layers of a SOCI image are
the source's own, so instead of a tree comparison the check confirms that the manifest lists
exactly the source manifest's layers and verifies each zTOC against the layer bytes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from acceld.convert.source import SourceImage
from acceld.errors import AcceldError
from acceld.formats.soci.names import (
    EMPTY_CONFIG,
    INDEX_DIGEST_ANNOTATION,
    INDEX_V1,
    INDEX_V2,
    LAYER_DIGEST_ANNOTATION,
    LAYER_MEDIA_TYPE_ANNOTATION,
    SPAN_SIZE_ANNOTATION,
    ZTOC_MEDIA_TYPE,
)
from acceld.formats.soci.verify import verify_ztoc
from acceld.oci import mediatypes as mt
from acceld.oci.digest import digest_hex
from acceld.oci.models import Descriptor, RawManifest
from acceld.registry.store import ImageStore


async def find_soci_index(store: ImageStore, image: SourceImage) -> tuple[str, RawManifest] | None:
    """("v2"|"v1", the SOCI index manifest) of `image`, or None when it has none."""
    digest = (image.manifest.annotations or {}).get(INDEX_DIGEST_ANNOTATION)
    if digest:
        return "v2", await store.get_manifest(digest)
    try:
        found = await store.referrers(image.raw.digest, INDEX_V1)
    except AcceldError:
        return None
    found = [d for d in found if d.artifact_type in (None, INDEX_V1)]
    if not found:
        return None
    return "v1", await store.get_manifest(found[0].digest)


async def check_soci(
    store: ImageStore,
    image: SourceImage,
    version: str,
    index: RawManifest,
    source: SourceImage | None,
    work: Path,
) -> tuple[list[str], int]:
    """(problems, TOC entries verified)."""
    problems: list[str] = []
    manifest = index.manifest()
    config_type = INDEX_V2 if version == "v2" else INDEX_V1
    if manifest.config.media_type != config_type:
        problems.append(f"SOCI index {index.digest}: config media type {manifest.config.media_type}")
    elif await store.get_blob_bytes(manifest.config) != EMPTY_CONFIG:
        problems.append(f"SOCI index {index.digest}: config blob is not {{}}")
    subject = (manifest.subject.digest, manifest.subject.size) if manifest.subject else None
    expected = (image.raw.digest, len(image.raw.data)) if version == "v1" else None
    if subject != expected:
        problems.append(f"SOCI index {index.digest}: subject {subject}, want {expected} for {version}")
    if source is not None:
        have = [(d.digest, d.size) for d in image.manifest.layers]
        want = [(d.digest, d.size) for d in source.manifest.layers]
        if have != want:
            problems.append(f"the layers are not those of the source {source.raw.digest}")
    positions = {layer.digest: n for n, layer in enumerate(image.manifest.layers)}
    last = -1
    entries = 0
    for ztoc in manifest.layers:
        if ztoc.media_type != ZTOC_MEDIA_TYPE:
            continue
        try:
            entries += await _check_ztoc(store, image, ztoc, positions, last, work)
            last = positions[(ztoc.annotations or {})[LAYER_DIGEST_ANNOTATION]]
        except AcceldError as exc:
            problems.append(f"zTOC {ztoc.digest}: {exc}")
    if not any(z.media_type == ZTOC_MEDIA_TYPE for z in manifest.layers):
        problems.append(f"SOCI index {index.digest} has no zTOC")
    return problems, entries


async def _check_ztoc(
    store: ImageStore, image: SourceImage, ztoc: Descriptor, positions: dict[str, int], last: int, work: Path
) -> int:
    annotations = ztoc.annotations or {}
    layer_digest = annotations.get(LAYER_DIGEST_ANNOTATION, "")
    if layer_digest not in positions:
        raise AcceldError(f"names layer {layer_digest or '(none)'}, not a layer of {image.raw.digest}")
    if positions[layer_digest] <= last:
        raise AcceldError("out of layer order, or a second zTOC for one layer")
    layer = image.manifest.layers[positions[layer_digest]]
    if annotations.get(LAYER_MEDIA_TYPE_ANNOTATION) != layer.media_type:
        raise AcceldError(f"layer media type annotation differs from {layer.media_type}")
    compression = mt.layer_compression(layer.media_type)
    if compression not in ("gzip", "none"):
        raise AcceldError(f"indexes a {compression} layer")
    span = annotations.get(SPAN_SIZE_ANNOTATION)
    data = await store.get_blob_bytes(ztoc, limit=max(ztoc.size, 1))
    layer_path = work / f"layer-{digest_hex(layer.digest)}"
    if not layer_path.exists():
        await store.fetch_blob(layer, layer_path)
    report = await asyncio.to_thread(
        verify_ztoc, data, layer_path, layer.size, compression, int(span) if span else None
    )
    return report.entries
