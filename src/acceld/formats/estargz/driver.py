"""The eStargz format driver the conversion pipeline runs for every layer."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from acceld.formats.driver import ImageAdditions, LayerBlob, LayerOutput, SourceLayer
from acceld.formats.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from acceld.formats.estargz.writer import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COMPRESSION_LEVEL,
    WriterOptions,
    write_estargz,
)
from acceld.formats.targuard import TarGuard, taking_headers

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class EstargzDriver:
    """Converts layers to eStargz.

    `prefetch_files` are moved to the front of every layer that has them, followed by
    `.prefetch.landmark`. `workers` is the number of threads compressing gzip members of one
    layer (None: the usable CPUs); it does not change the output, so `options_key` leaves it out.
    When layers are converted in parallel processes, set it to about CPUs / processes.
    `utf8_names=False` converts names that are not UTF-8 as the reference writer does (U+FFFD in
    the TOC, so lazy pulling shows other names); by default such layers are refused.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    min_chunk_size: int = 0
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    prefetch_files: Sequence[str] = ()
    workers: int | None = None
    utf8_names: bool = True

    name = "estargz"
    tag_suffix = "-esgz"
    reads_compressed = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch_files", tuple(self.prefetch_files))
        self.writer_options()  # validates every option now rather than in a worker

    def writer_options(self) -> WriterOptions:
        return WriterOptions(
            chunk_size=self.chunk_size,
            min_chunk_size=self.min_chunk_size,
            compression_level=self.compression_level,
            prefetch_files=tuple(self.prefetch_files),
            workers=len(os.sched_getaffinity(0)) if self.workers is None else self.workers,
            utf8_names=self.utf8_names,
        )

    def options_key(self) -> str:
        options = {
            "chunk_size": self.chunk_size,
            "min_chunk_size": self.min_chunk_size,
            "compression_level": self.compression_level,
            "prefetch_files": list(self.prefetch_files),
        }
        if not self.utf8_names:
            options["utf8_names"] = False
        return f"{self.name}:" + json.dumps(options, sort_keys=True, separators=(",", ":"))

    def is_converted(self, layer: SourceLayer) -> bool:
        return TOC_DIGEST_ANNOTATION in layer.annotations

    def convert_layer(
        self,
        tar: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        tar_sha256: str | None = None,
        guard: TarGuard | None = None,
    ) -> LayerOutput:
        # taken before the writer reads the magic bytes: its tar scan hands the guard every header
        result = write_estargz(tar, out, workdir, self.writer_options(), taking_headers(guard))
        return LayerOutput(
            media_type=LAYER_MEDIA_TYPE,
            diff_id=result.diff_id,
            annotations={
                TOC_DIGEST_ANNOTATION: result.toc_digest,
                UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
            },
            metadata_sizes={"TOC": result.toc_size},
        )

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        return ImageAdditions()

    def source_annotations(self, source_digest: str, source_reference: str) -> Mapping[str, str]:
        return {}
