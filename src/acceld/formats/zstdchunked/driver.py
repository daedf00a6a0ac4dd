"""The zstd:chunked format driver (the current containers/storage format)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acceld.formats.driver import FormatError, ImageAdditions, LayerBlob, LayerOutput, SourceLayer
from acceld.formats.targuard import TarGuard
from acceld.formats.zstdchunked.annotations import (
    MANIFEST_CHECKSUM_KEY,
    MANIFEST_POSITION_KEY,
    TARSPLIT_POSITION_KEY,
)

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
_ANNOTATIONS = (MANIFEST_CHECKSUM_KEY, MANIFEST_POSITION_KEY, TARSPLIT_POSITION_KEY)


@dataclass(frozen=True)
class ZstdChunkedDriver:
    """Converts layers to zstd:chunked.

    `compression_level`: the zstd level of every frame; None (the default) grades it by frame
    size (`FrameLevels.graded`: 7, and 6 / 5 for frames of at most 64 / 16 KiB).
    `workers` is the number of threads compressing frames of one layer (None: the CPU count);
    it does not change the output, so `options_key` leaves it out.
    """

    compression_level: int | None = None
    workers: int | None = None

    name = "zstdchunked"
    tag_suffix = "-zstdchunked"
    reads_compressed = False

    def __post_init__(self) -> None:
        if self.compression_level is not None and not 1 <= self.compression_level <= 22:
            raise FormatError(f"zstd compression level must be 1..22, not {self.compression_level}")
        if self.workers is not None and self.workers < 1:
            raise FormatError(f"workers must be at least 1, not {self.workers}")

    def options_key(self) -> str:
        options = {"compression_level": self.compression_level}
        return f"{self.name}:" + json.dumps(options, sort_keys=True, separators=(",", ":"))

    def is_converted(self, layer: SourceLayer) -> bool:
        return all(key in layer.annotations for key in _ANNOTATIONS)

    def convert_layer(
        self,
        tar: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        tar_sha256: str | None = None,
        guard: TarGuard | None = None,
    ) -> LayerOutput:
        from acceld.formats.zstdchunked.frames import FrameLevels
        from acceld.formats.zstdchunked.writer import write_zstd_chunked  # numpy: not in the CLI

        level = self.compression_level
        result = write_zstd_chunked(
            tar,
            out,
            workdir,
            levels=FrameLevels.uniform(level) if level is not None else FrameLevels.graded(),
            workers=self.workers or os.cpu_count() or 1,
            tar_sha256=tar_sha256,
            guard=guard,
        )
        return LayerOutput(
            media_type=LAYER_MEDIA_TYPE,
            diff_id=result.diff_id,
            annotations=result.annotations,
            metadata_sizes=result.metadata_sizes,
        )

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        return ImageAdditions()

    def source_annotations(self, source_digest: str, source_reference: str) -> Mapping[str, str]:
        return {}
