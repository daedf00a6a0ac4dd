"""SOCI index manifests (v1 with `subject`, v2 without) and the v2 image: annotated image manifests
plus an OCI index listing them and their SOCI indexes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from acceld.formats.driver import LayerBlob, PlatformArtifacts
from acceld.formats.soci.names import (
    BUILD_TOOL_ANNOTATION,
    IMAGE_MANIFEST_DIGEST_ANNOTATION,
    INDEX_DIGEST_ANNOTATION,
    INDEX_V2,
    ZTOC_MEDIA_TYPE,
)
from acceld.oci import mediatypes as mt
from acceld.oci.models import Descriptor, Manifest, RawManifest
from acceld.oci.platform import Platform


def _compact(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def ztoc_descriptor(ztoc: LayerBlob) -> Descriptor:
    return Descriptor(
        mediaType=ZTOC_MEDIA_TYPE, digest=ztoc.digest, size=ztoc.size, annotations=dict(ztoc.annotations)
    )


def index_manifest(
    config_type: str,
    config: Descriptor,
    ztocs: Sequence[LayerBlob],
    build_tool: str,
    subject: Descriptor | None,
) -> RawManifest:
    """A SOCI index manifest: the zTOCs in image-layer order; `subject` for v1 only."""
    manifest = Manifest(
        schemaVersion=2,
        mediaType=mt.OCI_MANIFEST,
        config=Descriptor(mediaType=config_type, digest=config.digest, size=config.size),
        layers=[ztoc_descriptor(ztoc) for ztoc in ztocs],
        subject=subject,
        annotations={BUILD_TOOL_ANNOTATION: build_tool},
    )
    return RawManifest.from_bytes(manifest.to_json(), mt.OCI_MANIFEST)


def annotated_manifest(source: RawManifest, soci_index: RawManifest | None) -> RawManifest:
    """The image manifest as an OCI manifest (config type OCI too; layers untouched), with the
    `index-digest` annotation when it has a SOCI index."""
    document = json.loads(source.data)
    document["mediaType"] = mt.OCI_MANIFEST
    document["config"]["mediaType"] = mt.OCI_CONFIG
    if soci_index is not None:
        document["annotations"] = {
            **(document.get("annotations") or {}),
            INDEX_DIGEST_ANNOTATION: soci_index.digest,
        }
    ordered = Manifest.model_validate(document).to_json()  # Go's field order
    return RawManifest.from_bytes(ordered, mt.OCI_MANIFEST)


def platform_of(item: PlatformArtifacts) -> dict[str, Any]:
    """The platform of the index entry, else the image config's."""
    platform = item.entry.platform or Platform.parse(item.platform)
    return platform.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Rewritten:
    manifest: RawManifest  # the annotated image manifest
    soci_index: RawManifest | None
    platform: dict[str, Any]


def v2_index(source: RawManifest, rewritten: dict[str, Rewritten]) -> RawManifest:
    """The OCI index of the SOCI-enabled image, `subject` = the source. `rewritten`: by source
    manifest digest. Entries of platforms that were not selected stay as they are."""
    if source.is_index:
        document = json.loads(source.data)
        document["mediaType"] = mt.OCI_INDEX
        entries = document.get("manifests") or []
    else:
        document = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX}
        only = rewritten[source.digest]
        entries = [{"mediaType": source.media_type, "digest": source.digest, "size": len(source.data),
                    "platform": only.platform}]  # fmt: skip
    soci_entries = []
    for entry in entries:
        if entry.get("digest") not in rewritten:
            continue
        item = rewritten[entry["digest"]]
        manifest, soci_index = item.manifest, item.soci_index
        entry.update(mediaType=mt.OCI_MANIFEST, digest=manifest.digest, size=len(manifest.data))
        annotations = json.loads(manifest.data).get("annotations")
        if annotations:
            entry["annotations"] = annotations
        else:
            entry.pop("annotations", None)
        if soci_index is not None:
            soci_entries.append(
                {
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": INDEX_V2,
                    "digest": soci_index.digest,
                    "size": len(soci_index.data),
                    "platform": entry.get("platform") or item.platform,
                    "annotations": {IMAGE_MANIFEST_DIGEST_ANNOTATION: manifest.digest},
                }
            )
    document["manifests"] = [*entries, *soci_entries]
    document["subject"] = {"mediaType": source.media_type, "digest": source.digest, "size": len(source.data)}
    return RawManifest.from_bytes(_compact(document), mt.OCI_INDEX)
