"""The contract between the conversion pipeline and a format driver.

There are two kinds of driver, modelled on containerd's converter (a per-layer hook, then a
manifest/index hook); the pipeline (`acceld.convert.pipeline`) is the same for both: fetch the
source, run the layer hook of every distinct layer in worker processes (layer cache included),
run the image hook, push.

* `Driver` rewrites layers (eStargz, zstd:chunked, Nydus): `convert_layer` reads a source
  layer's *decompressed tar* and writes a converted blob; `finalize` may add image-level layers
  (Nydus's bootstrap); the pipeline builds the converted configs, manifests and index itself,
  each with `subject` = its source.
* `ArtifactDriver` leaves the layers alone and adds artifacts next to them (SOCI, Nydus zran):
  `skip_reason` decides from the descriptor alone which layers get no artifact (not even
  fetched); `build_artifact` reads a layer's *compressed blob* (the pipeline verifies its digest
  as it is read), hands every tar byte it decodes to the pipeline's `on_tar` (limits and path
  rule) and writes one artifact blob, or raises `SkipLayer`; `build_image` then gets,
  per selected platform, the source manifest and the per-layer results, and returns everything
  to push (`ArtifactImage`: blobs, manifests by digest, the tagged root) — or None when no layer
  qualified, which the pipeline reports as "not applicable" and pushes nothing.
  `existing_artifacts` lets the pipeline reuse artifacts already in the target repository.

Drivers are plain picklable objects (options only): layer hooks run in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from acceld.errors import AcceldError

if TYPE_CHECKING:
    from acceld.formats.targuard import TarGuard
    from acceld.oci.models import Descriptor, RawManifest


@dataclass(frozen=True)
class SourceLayer:
    """The source layer as the manifest and config describe it."""

    digest: str
    media_type: str
    size: int
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerOutput:
    """What a driver reports about the blob it wrote.

    The pipeline measures digest and size of the written stream itself.
    `diff_id` is the sha256 (``sha256:<hex>``) of the layer as a runtime unpacks it.
    """

    media_type: str
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    # uncompressed bytes of each metadata part a reader loads (e.g. {"TOC": n}), checked against
    # the max_metadata_bytes limit
    metadata_sizes: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class HashingSink(Protocol):
    """An `out` that hashes everything written to it with sha256 anyway (the pipeline's): a driver
    that needs the digest of its own output asks it instead of hashing the bytes a second time."""

    def tell(self) -> int:
        """The bytes written so far."""
        ...

    def sha256_digest(self) -> bytes:
        """The sha256 of the bytes written so far."""
        ...


@dataclass(frozen=True)
class LayerBlob:
    """A finished blob on local disk with its descriptor fields."""

    path: Path
    media_type: str
    digest: str
    size: int
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageAdditions:
    """Image-level parts a driver adds once all layers are converted."""

    extra_layers: Sequence[LayerBlob] = ()
    history: Sequence[Mapping[str, Any]] = ()
    manifest_annotations: Mapping[str, str] = field(default_factory=dict)


class Driver(Protocol):
    """A format driver. Implementations must be picklable (options only, no open handles)."""

    name: str
    tag_suffix: str
    # True: `convert_layer` reads the source layer's gzip blob as stored (digest verified), not its
    # tar, and the result reads those layers in place (Nydus zran): only gzip layers qualify, and the
    # image must be pushed to the source repository.
    reads_compressed: bool

    def options_key(self) -> str:
        """A stable string of every option that changes the output (cache and dedup key)."""
        ...

    def is_converted(self, layer: SourceLayer) -> bool:
        """True when the source layer is already in this format and passes through unchanged."""
        ...

    def convert_layer(
        self,
        tar: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        tar_sha256: str | None = None,
        guard: TarGuard | None = None,
    ) -> LayerOutput:
        """Read the decompressed tar from `tar`, write the converted blob to `out` sequentially.

        `workdir` is a private scratch directory (spool files there, never in memory).
        `tar_sha256`, when given, is the sha256 digest of `tar`'s bytes, which the caller verifies
        as they are read: a driver whose diff_id is that digest need not hash the tar again.
        `guard`, when given, is the TarGuard that watches `tar`'s bytes: a driver that reads every
        header of `tar` with a `tarreader.HeaderReader` hands it to that reader, so the headers are
        parsed once; a driver may ignore it (the guard then parses them itself).
        Raise `FormatError` for malformed input.
        """
        ...

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        """Image-level step after every layer is converted (layers in manifest order)."""
        ...

    def source_annotations(self, source_digest: str, source_reference: str) -> Mapping[str, str]:
        """Format-specific manifest annotations naming the source manifest (may be empty)."""
        ...


class SkipLayer(Exception):
    """Raised by `ArtifactDriver.build_artifact`: this layer gets no artifact (the reason says why)."""


@dataclass(frozen=True)
class ArtifactOutput:
    """What an artifact driver reports about the artifact blob it wrote for one layer."""

    media_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerResult:
    """One source layer of a platform as the image hook sees it: its artifact, or why there is none."""

    layer: SourceLayer
    artifact: LayerBlob | None
    skipped: str = ""


@dataclass(frozen=True)
class PlatformArtifacts:
    """One selected platform: the source manifest (exact bytes), its entry and per-layer results."""

    entry: Descriptor  # the source index entry (with platform), or the root manifest's descriptor
    manifest: RawManifest
    platform: str
    layers: Sequence[LayerResult]


@dataclass(frozen=True)
class ArtifactImage:
    """Everything an artifact driver pushes, in dependency order."""

    blobs: Sequence[LayerBlob]  # artifact blobs and any other blobs (configs) the manifests name
    manifests: Sequence[RawManifest]  # pushed by digest, in this order
    root: RawManifest | None  # pushed last, with the target tag; None: the last manifest is the result


@runtime_checkable
class ArtifactDriver(Protocol):
    """A driver that adds artifacts next to the unchanged source layers (see the module docstring)."""

    name: str
    tag_suffix: str

    def options_key(self) -> str:
        """A stable string of every option that changes the artifacts (cache and dedup key)."""
        ...

    artifact_types: tuple[str, ...]  # artifactTypes of what it pushes (index entries, referrers)

    @property
    def referrer_result_types(self) -> tuple[str, ...]:
        """artifactTypes of a result pushed without a tag, found only as a referrer of the source
        manifests (empty when the result has the target tag)."""
        ...

    def is_converted(self, layer: SourceLayer) -> bool:
        """Always False: an artifact driver never changes layers (kept so callers treat both kinds alike)."""
        ...

    def existing_artifacts(self, manifests: Sequence[RawManifest]) -> Mapping[str, Descriptor]:
        """Artifacts pushed before that this driver would build again (source layer digest →
        artifact descriptor), read from `manifests`: what the pipeline found in the target
        repository (entries of the target tag's index and referrers of every source manifest,
        both of `artifact_types`). Those layers are neither fetched nor rebuilt."""
        ...

    def skip_reason(self, layer: SourceLayer) -> str | None:
        """Why `layer` gets no artifact, judged from its descriptor alone; None: build one."""
        ...

    def build_artifact(
        self,
        blob: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        on_tar: Callable[[memoryview], None] | None = None,
    ) -> ArtifactOutput:
        """Read the compressed source blob from `blob`, write the artifact to `out` sequentially.

        `on_tar` hears every byte of the layer's tar in order as it is decoded (the whole layer,
        unless an error or `SkipLayer` ends the build); exceptions it raises end the build.
        Raise `SkipLayer` when the content rules the layer out, `FormatError` for malformed input.
        """
        ...

    def build_image(
        self, source: RawManifest, platforms: Sequence[PlatformArtifacts], workdir: Path
    ) -> ArtifactImage | None:
        """The manifests/index to push for the source root `source`; None when nothing qualified."""
        ...


AnyDriver = Driver | ArtifactDriver


class FormatError(AcceldError):
    """Malformed input or output of a format (bad tar, corrupt blob, spec violation)."""
