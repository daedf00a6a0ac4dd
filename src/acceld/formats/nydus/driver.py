"""`NydusDriver`: the Nydus RAFS v6 format driver for the conversion pipeline (§2)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from acceld import __version__
from acceld.formats.driver import FormatError, ImageAdditions, LayerBlob, LayerOutput, SourceLayer
from acceld.formats.nydus.blob import write_layer_blob
from acceld.formats.nydus.blobfile import read_blob_bootstrap, read_blob_meta_file
from acceld.formats.nydus.bootstrap import BootstrapSettings, build_bootstrap
from acceld.formats.nydus.bootstrap_layer import write_bootstrap_layer
from acceld.formats.nydus.chunkdict import ChunkDict
from acceld.formats.nydus.load import load_bootstrap
from acceld.formats.nydus.merge import LayerBootstrap, merge_layers
from acceld.formats.nydus.options import DEFAULT_CHUNK_SIZE, NydusOptions

NYDUS_BLOB_MEDIA_TYPE = "application/vnd.oci.image.layer.nydus.blob.v1"
BOOTSTRAP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_PREFIX = "containerd.io/snapshot/"
BLOB_ANNOTATION = ANNOTATION_PREFIX + "nydus-blob"
BOOTSTRAP_ANNOTATION = ANNOTATION_PREFIX + "nydus-bootstrap"
FS_VERSION_ANNOTATION = ANNOTATION_PREFIX + "nydus-fs-version"
BUILDER_VERSION_ANNOTATION = ANNOTATION_PREFIX + "nydus-builder-version"
SOURCE_DIGEST_ANNOTATION = ANNOTATION_PREFIX + "nydus-source-digest"
SOURCE_REFERENCE_ANNOTATION = ANNOTATION_PREFIX + "nydus-source-reference"
BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}


@dataclass(frozen=True)
class NydusDriver:
    """Options only, so the pipeline can pickle it into worker processes.

    `chunk_dict` is the path of a previously converted Nydus image's bootstrap (its raw
    `image.boot` or its whole bootstrap layer), with that image's blobs stored in the same
    directory under their hex digests.
    """

    compressor: str = "zstd"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    digester: str = "blake3"
    prefetch_patterns: tuple[str, ...] = ("/",)
    chunk_dict: str | None = None
    name: str = field(default="nydus", init=False)
    tag_suffix: str = field(default="-nydus", init=False)

    def __post_init__(self) -> None:
        # service configs may hand a list; keep the driver hashable and its key stable
        object.__setattr__(self, "prefetch_patterns", tuple(self.prefetch_patterns))
        self.options  # noqa: B018 - validates the options early

    @property
    def options(self) -> NydusOptions:
        return NydusOptions(self.chunk_size, self.compressor, self.digester, tuple(self.prefetch_patterns))

    def options_key(self) -> str:
        key = (
            f"nydus-v6 compressor={self.compressor} chunk_size={self.chunk_size:#x} "
            f"digester={self.digester} prefetch={','.join(self.prefetch_patterns)}"
        )
        if self.chunk_dict is not None:
            try:
                with open(self.chunk_dict, "rb") as handle:
                    key += " chunk_dict=sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as exc:
                raise FormatError(f"chunk dict {self.chunk_dict}: {exc.strerror}") from exc
        return key

    def is_converted(self, layer: SourceLayer) -> bool:
        return (
            layer.media_type == NYDUS_BLOB_MEDIA_TYPE
            or layer.annotations.get(BLOB_ANNOTATION) == "true"
            or layer.annotations.get(BOOTSTRAP_ANNOTATION) == "true"
        )

    def _chunk_dict(self) -> ChunkDict | None:
        return ChunkDict.load(Path(self.chunk_dict)) if self.chunk_dict is not None else None

    def convert_layer(self, tar: BinaryIO, out: BinaryIO, layer: SourceLayer, workdir: Path) -> LayerOutput:
        result = write_layer_blob(tar, out, self.options, self._chunk_dict())
        return LayerOutput(
            media_type=NYDUS_BLOB_MEDIA_TYPE,
            diff_id=result.digest,
            annotations={BLOB_ANNOTATION: "true"},
        )

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        blob_layers = [layer for layer in layers if layer.media_type == NYDUS_BLOB_MEDIA_TYPE]
        if len(blob_layers) != len(layers):
            raise FormatError(
                "every layer of a Nydus image must be a Nydus blob before the bootstrap is built"
            )
        merged = merge_layers(
            [
                LayerBootstrap(
                    _hex(layer.digest), load_bootstrap(read_blob_bootstrap(layer.path), _hex(layer.digest))
                )
                for layer in blob_layers
            ]
        )
        bootstrap = build_bootstrap(
            merged.root,
            BootstrapSettings(
                chunk_size=merged.chunk_size,
                compressor=merged.compressor,
                digester=merged.digester,
                blobs=merged.blobs,
                prefetch_patterns=self.prefetch_patterns,
                always_has_xattr=True,
            ),
        )
        paths = {_hex(layer.digest): layer.path for layer in blob_layers}
        chunk_dict = self._chunk_dict()
        dict_layers: list[LayerBlob] = []
        for blob in merged.blobs:
            if blob.blob_id in paths:
                continue
            if chunk_dict is None:
                raise FormatError(
                    f"blob {blob.blob_id} is referenced but neither a layer nor in a chunk dict"
                )
            path = paths[blob.blob_id] = chunk_dict.blob_path(blob.blob_id)
            dict_layers.append(_blob_layer(path, blob.blob_id))
        metas = {}
        for blob in merged.blobs:
            meta = read_blob_meta_file(paths[blob.blob_id])
            if meta is not None:
                metas[blob.blob_id] = meta
        written = write_bootstrap_layer(workdir / "nydus-bootstrap.tar.gz", bootstrap, metas)
        bootstrap_layer = LayerBlob(
            path=workdir / "nydus-bootstrap.tar.gz",
            media_type=BOOTSTRAP_MEDIA_TYPE,
            digest=written.digest,
            size=written.size,
            diff_id=written.diff_id,
            annotations={FS_VERSION_ANNOTATION: "6", BOOTSTRAP_ANNOTATION: "true"},
        )
        return ImageAdditions(
            extra_layers=[*dict_layers, bootstrap_layer],
            history=[dict(BOOTSTRAP_HISTORY)],
            manifest_annotations={
                FS_VERSION_ANNOTATION: "6",
                BUILDER_VERSION_ANNOTATION: f"acceld {__version__}",
            },
        )

    def source_annotations(self, source_digest: str, source_reference: str) -> Mapping[str, str]:
        return {SOURCE_DIGEST_ANNOTATION: source_digest, SOURCE_REFERENCE_ANNOTATION: source_reference}


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64:
        raise FormatError(f"unexpected blob digest {digest!r}")
    return value


def _blob_layer(path: Path, blob_id: str) -> LayerBlob:
    digest = "sha256:" + blob_id
    return LayerBlob(
        path=path,
        media_type=NYDUS_BLOB_MEDIA_TYPE,
        digest=digest,
        size=path.stat().st_size,
        diff_id=digest,
        annotations={BLOB_ANNOTATION: "true"},
    )
