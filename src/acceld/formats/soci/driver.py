"""`SociDriver`: SOCI indexes next to the unchanged layers (an artifact driver, see formats/driver.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from acceld import __version__
from acceld.formats.driver import (
    ArtifactImage,
    ArtifactOutput,
    LayerBlob,
    PlatformArtifacts,
    SourceLayer,
)
from acceld.formats.soci.build import build_gzip_ztoc, build_tar_ztoc
from acceld.formats.soci.names import (
    EMPTY_CONFIG,
    INDEX_V1,
    INDEX_V2,
    LAYER_DIGEST_ANNOTATION,
    LAYER_MEDIA_TYPE_ANNOTATION,
    SPAN_SIZE_ANNOTATION,
    ZTOC_MEDIA_TYPE,
)
from acceld.oci import mediatypes as mt
from acceld.oci.digest import sha256_digest
from acceld.oci.mediatypes import layer_compression

if TYPE_CHECKING:
    from acceld.oci.models import Descriptor, RawManifest

DEFAULT_MIN_LAYER_SIZE = 10 << 20
DEFAULT_SPAN_SIZE = 4 << 20
VERSIONS = ("v1", "v2")
BUILD_TOOL = f"acceld {__version__}"
_NON_DISTRIBUTABLE = frozenset(
    {mt.OCI_LAYER_NONDIST, mt.OCI_LAYER_NONDIST_GZIP, mt.OCI_LAYER_NONDIST_ZSTD, mt.DOCKER_FOREIGN_LAYER_GZIP}
)


def _size(text: str | int, what: str) -> int:
    """Bytes as an int or a string (`10485760`, `10M`, `4MiB`, `512K`)."""
    if isinstance(text, int):
        return text
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = 1
    for suffix, multiplier in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], multiplier
    try:
        return int(value, 0) * factor
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a size") from None


@dataclass(frozen=True)
class SociDriver:
    """Options only (picklable). `soci_version` v2 (default) or v1; sizes in bytes (or `10M`-style text)."""

    soci_version: str = "v2"
    min_layer_size: int | str = DEFAULT_MIN_LAYER_SIZE
    span_size: int | str = DEFAULT_SPAN_SIZE
    name: str = field(default="soci", init=False)
    tag_suffix: str = field(default="-soci", init=False)
    artifact_types: tuple[str, ...] = field(default=(INDEX_V2, INDEX_V1), init=False)

    def __post_init__(self) -> None:
        if self.soci_version not in VERSIONS:
            raise ValueError(f"soci_version must be v1 or v2, not {self.soci_version!r}")
        object.__setattr__(self, "min_layer_size", _size(self.min_layer_size, "min_layer_size"))
        object.__setattr__(self, "span_size", _size(self.span_size, "span_size"))
        if int(self.min_layer_size) < 0:
            raise ValueError("min_layer_size must not be negative")
        if not 1 << 10 <= int(self.span_size) <= 1 << 30:
            raise ValueError("span_size must be between 1 KiB and 1 GiB")

    def options_key(self) -> str:
        # the zTOC depends on the span size only; the version and threshold shape the index, not the zTOC
        return f"soci ztoc 0.9 span_size={self.span_size}"

    @property
    def referrer_result_types(self) -> tuple[str, ...]:
        return (INDEX_V1,) if self.soci_version == "v1" else ()

    def is_converted(self, layer: SourceLayer) -> bool:
        return False

    def existing_artifacts(self, manifests: Sequence[RawManifest]) -> dict[str, Descriptor]:
        """zTOCs of earlier SOCI indexes (v1 or v2) built with the same span size, by layer digest."""
        found: dict[str, Descriptor] = {}
        for raw in manifests:
            if not raw.is_manifest:
                continue
            manifest = raw.manifest()
            if manifest.config.media_type not in self.artifact_types:
                continue
            for ztoc in manifest.layers:
                annotations = ztoc.annotations or {}
                layer = annotations.get(LAYER_DIGEST_ANNOTATION)
                if (
                    ztoc.media_type == ZTOC_MEDIA_TYPE
                    and layer
                    and annotations.get(SPAN_SIZE_ANNOTATION) == str(self.span_size)
                ):
                    found.setdefault(layer, ztoc)
        return found

    def skip_reason(self, layer: SourceLayer) -> str | None:
        if layer.media_type in _NON_DISTRIBUTABLE:
            return "non-distributable layers are not indexed (the registry may not serve them)"
        compression = layer_compression(layer.media_type)
        if compression not in ("gzip", "none"):
            kind = f"{compression}-compressed" if compression else f"media type {layer.media_type}"
            return f"{kind} layers cannot be indexed (gzip or uncompressed tar only)"
        if layer.size < int(self.min_layer_size):
            return f"size {layer.size} is less than the minimum layer size {self.min_layer_size}"
        return None

    def build_artifact(
        self,
        blob: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        on_tar: Callable[[memoryview], None] | None = None,
    ) -> ArtifactOutput:
        span = int(self.span_size)
        if layer_compression(layer.media_type) == "gzip":
            build_gzip_ztoc(blob, out, span, workdir, BUILD_TOOL, on_tar)
        else:
            build_tar_ztoc(blob, out, span, BUILD_TOOL, on_tar)
        return ArtifactOutput(
            media_type=ZTOC_MEDIA_TYPE,
            annotations={
                LAYER_DIGEST_ANNOTATION: layer.digest,
                LAYER_MEDIA_TYPE_ANNOTATION: layer.media_type,
                SPAN_SIZE_ANNOTATION: str(span),
            },
        )

    def build_image(
        self, source: RawManifest, platforms: Sequence[PlatformArtifacts], workdir: Path
    ) -> ArtifactImage | None:
        # the image hook runs in the conversion's process, where the OCI models are loaded anyway
        from acceld.formats.soci.index import (
            Rewritten,
            annotated_manifest,
            index_manifest,
            platform_of,
            v2_index,
        )
        from acceld.oci.models import Descriptor

        ztocs = {
            p.manifest.digest: [r.artifact for r in p.layers if r.artifact is not None] for p in platforms
        }
        if not any(ztocs.values()):
            return None
        config_path = workdir / "soci-config.json"
        config_path.write_bytes(EMPTY_CONFIG)
        config_type = INDEX_V2 if self.soci_version == "v2" else INDEX_V1
        config = LayerBlob(config_path, config_type, sha256_digest(EMPTY_CONFIG), len(EMPTY_CONFIG), "")
        indexes: dict[str, RawManifest] = {}
        for item in platforms:
            if ztocs[item.manifest.digest]:
                subject = None
                if self.soci_version == "v1":
                    subject = Descriptor(
                        mediaType=item.manifest.media_type,
                        digest=item.manifest.digest,
                        size=len(item.manifest.data),
                    )
                indexes[item.manifest.digest] = index_manifest(
                    config_type, _descriptor(config), ztocs[item.manifest.digest], BUILD_TOOL, subject
                )
        blobs = [config, *{z.digest: z for zs in ztocs.values() for z in zs}.values()]
        if self.soci_version == "v1":
            return ArtifactImage(blobs=blobs, manifests=list(indexes.values()), root=None)
        rewritten = {
            item.manifest.digest: Rewritten(
                annotated_manifest(item.manifest, indexes.get(item.manifest.digest)),
                indexes.get(item.manifest.digest),
                platform_of(item),
            )
            for item in platforms
        }
        manifests = [*indexes.values(), *(r.manifest for r in rewritten.values())]
        return ArtifactImage(blobs=blobs, manifests=manifests, root=v2_index(source, rewritten))


def _descriptor(blob: LayerBlob) -> Descriptor:
    from acceld.oci.models import Descriptor

    return Descriptor(mediaType=blob.media_type, digest=blob.digest, size=blob.size)
