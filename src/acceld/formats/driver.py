"""The contract between the conversion pipeline and a format driver.

A driver turns one source layer (its decompressed tar stream) into one converted layer and
may add image-level parts (Nydus appends a bootstrap layer). Drivers are plain picklable
objects: the pipeline runs `convert_layer` in worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from acceld.errors import AcceldError


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

    def options_key(self) -> str:
        """A stable string of every option that changes the output (cache and dedup key)."""
        ...

    def is_converted(self, layer: SourceLayer) -> bool:
        """True when the source layer is already in this format and passes through unchanged."""
        ...

    def convert_layer(self, tar: BinaryIO, out: BinaryIO, layer: SourceLayer, workdir: Path) -> LayerOutput:
        """Read the decompressed tar from `tar`, write the converted blob to `out` sequentially.

        `workdir` is a private scratch directory (spool files there, never in memory).
        Raise `FormatError` for malformed input.
        """
        ...

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        """Image-level step after every layer is converted (layers in manifest order)."""
        ...

    def source_annotations(self, source_digest: str, source_reference: str) -> Mapping[str, str]:
        """Format-specific manifest annotations naming the source manifest (may be empty)."""
        ...


class FormatError(AcceldError):
    """Malformed input or output of a format (bad tar, corrupt blob, spec violation)."""
