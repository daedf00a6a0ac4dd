"""`NydusDriver`: the Nydus RAFS v6 format driver for the conversion pipeline (§2)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from acceld import __version__
from acceld.formats.driver import FormatError, ImageAdditions, LayerBlob, LayerOutput, SourceLayer
from acceld.formats.nydus.blobfile import open_blob_bootstrap, read_toc_digest, write_blob_meta_file
from acceld.formats.nydus.bootstrap import Bootstrap, BootstrapSettings
from acceld.formats.nydus.bootstrap_layer import write_bootstrap_layer
from acceld.formats.nydus.chunkdict import ChunkDict
from acceld.formats.nydus.layout import BLOB_INLINED_FS_META
from acceld.formats.nydus.load import LoadedBootstrap, load_bootstrap
from acceld.formats.nydus.merge import LayerBootstrap, merge_layers
from acceld.formats.nydus.options import DEFAULT_CHUNK_SIZE, NydusOptions
from acceld.formats.nydus.tree import BlobRefs
from acceld.oci.mediatypes import layer_compression

if TYPE_CHECKING:  # the layer writers run in worker processes, whose fork server imports them
    from acceld.formats.targuard import TarGuard

NYDUS_BLOB_MEDIA_TYPE = "application/vnd.oci.image.layer.nydus.blob.v1"
BOOTSTRAP_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_PREFIX = "containerd.io/snapshot/"
BLOB_ANNOTATION = ANNOTATION_PREFIX + "nydus-blob"
BOOTSTRAP_ANNOTATION = ANNOTATION_PREFIX + "nydus-bootstrap"
FS_VERSION_ANNOTATION = ANNOTATION_PREFIX + "nydus-fs-version"
BUILDER_VERSION_ANNOTATION = ANNOTATION_PREFIX + "nydus-builder-version"
SOURCE_DIGEST_ANNOTATION = ANNOTATION_PREFIX + "nydus-source-digest"
SOURCE_REFERENCE_ANNOTATION = ANNOTATION_PREFIX + "nydus-source-reference"
REF_ANNOTATION = ANNOTATION_PREFIX + "nydus-ref"  # a zran ref blob names its gzip layer
BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}
_BOOTSTRAP_IN_MEMORY = 2 << 20  # a layer bootstrap up to this size (~10 k files) is loaded from memory


@dataclass(frozen=True)
class NydusDriver:
    """Options only, so the pipeline can pickle it into worker processes.

    `chunk_dict` is the path of a previously converted Nydus image's bootstrap (its raw
    `image.boot` or its whole bootstrap layer), with that image's blobs stored in the same
    directory under their hex digests.

    `oci_ref` writes a zran (OCI-ref) image instead (docs/formats/nydus-zran.md): per gzip layer a
    small ref blob whose chunks point into the original layer, which stays where it is. Chunk
    digests are sha256 and the compressor is the layer's gzip, so `compressor`/`digester` do not
    apply; a chunk dict does not either (the reference writes no dictionary blobs for it).
    """

    compressor: str = "zstd"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    digester: str = "blake3"
    prefetch_patterns: tuple[str, ...] = ("/",)
    chunk_dict: str | None = None
    oci_ref: bool = False
    name: str = field(default="nydus", init=False)
    tag_suffix: str = field(default="-nydus", init=False)
    reads_compressed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # service configs may hand a list; keep the driver hashable and its key stable
        object.__setattr__(self, "prefetch_patterns", tuple(self.prefetch_patterns))
        self.options  # noqa: B018 - validates the options early
        if self.oci_ref:
            object.__setattr__(self, "tag_suffix", "-nydus-oci-ref")
            object.__setattr__(self, "reads_compressed", True)
            if self.chunk_dict is not None:
                raise FormatError(
                    "oci_ref images cannot use a chunk dict: their chunks stay in the source layers"
                )

    @property
    def options(self) -> NydusOptions:
        return NydusOptions(self.chunk_size, self.compressor, self.digester, tuple(self.prefetch_patterns))

    def options_key(self) -> str:
        if self.oci_ref:
            prefetch = ",".join(self.prefetch_patterns)
            return f"nydus-v6 oci-ref zran chunk_size={self.chunk_size:#x} prefetch={prefetch}"
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

    def check_source_layer(self, layer: SourceLayer) -> None:
        """oci_ref: every source layer must be gzip, the only compression zran contexts index."""
        if self.oci_ref and layer_compression(layer.media_type) != "gzip":
            raise FormatError(
                f"layer {layer.digest} ({layer.media_type}) is not gzip: oci_ref images can only "
                "reference gzip layers (convert to native Nydus instead)"
            )

    def convert_layer(
        self,
        tar: BinaryIO,
        out: BinaryIO,
        layer: SourceLayer,
        workdir: Path,
        tar_sha256: str | None = None,
        guard: TarGuard | None = None,
    ) -> LayerOutput:
        if self.oci_ref:
            return self.convert_gzip_layer(tar, out, layer, workdir)
        from acceld.formats.nydus.blob import write_layer_blob  # a worker's: not in the CLI

        result = write_layer_blob(tar, out, self.options, workdir, self._chunk_dict(), guard)
        return LayerOutput(
            media_type=NYDUS_BLOB_MEDIA_TYPE,
            diff_id=result.digest,
            annotations={BLOB_ANNOTATION: "true"},
        )

    def convert_gzip_layer(
        self, gzip_layer: BinaryIO, out: BinaryIO, layer: SourceLayer, workdir: Path
    ) -> LayerOutput:
        """oci_ref: read the still-compressed layer and write its ref blob (temp files in `workdir`)."""
        self.check_source_layer(layer)
        from acceld.formats.nydus.zran import write_ref_blob  # a worker's: not in the CLI

        result = write_ref_blob(
            gzip_layer, out, layer.digest, self.chunk_size, workdir, self.prefetch_patterns
        )
        return LayerOutput(
            media_type=NYDUS_BLOB_MEDIA_TYPE,
            diff_id=result.digest,
            annotations={BLOB_ANNOTATION: "true", REF_ANNOTATION: layer.digest},
        )

    def finalize(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        if self.oci_ref:
            return self._finalize_oci_ref(layers, workdir)
        blob_layers = [layer for layer in layers if layer.media_type == NYDUS_BLOB_MEDIA_TYPE]
        if len(blob_layers) != len(layers):
            raise FormatError(
                "every layer of a Nydus image must be a Nydus blob before the bootstrap is built"
            )
        refs = BlobRefs()
        merged = merge_layers(
            [
                LayerBootstrap(blob_id, _load_layer_bootstrap(layer.path, blob_id, workdir, refs))
                for layer in blob_layers
                for blob_id in [_hex(layer.digest)]
            ]
        )
        bootstrap = Bootstrap(
            merged.root,
            BootstrapSettings(
                chunk_size=merged.chunk_size,
                compressor=merged.compressor,
                digester=merged.digester,
                blobs=merged.blobs,
                prefetch_patterns=self.prefetch_patterns,
                always_has_xattr=True,
            ),
            merged.refs,
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
            meta = workdir / f"{blob.blob_id}.blob.meta"
            if write_blob_meta_file(paths[blob.blob_id], meta):
                metas[blob.blob_id] = meta
        return self._additions(workdir, bootstrap, metas, dict_layers)

    def _finalize_oci_ref(self, layers: Sequence[LayerBlob], workdir: Path) -> ImageAdditions:
        """The merged bootstrap over the ref blobs: blob ids are the gzip layers, the meta fields
        name the ref blobs (nydus-zran.md §2.2, §7)."""
        refs: dict[str, LayerBlob] = {}
        per_layer = []
        blob_refs = BlobRefs()
        for layer in layers:
            gzip_digest = layer.annotations.get(REF_ANNOTATION)
            if layer.media_type != NYDUS_BLOB_MEDIA_TYPE or gzip_digest is None:
                raise FormatError(
                    f"layer {layer.digest} is not a Nydus ref blob: oci_ref images need one per layer"
                )
            gzip_hex = _hex(gzip_digest)
            refs[gzip_hex] = layer
            loaded = _load_layer_bootstrap(layer.path, gzip_hex, workdir, blob_refs)
            per_layer.append(LayerBootstrap(gzip_hex, loaded))
        merged = merge_layers(per_layer)
        blobs = []
        for blob in merged.blobs:
            ref = refs.get(blob.blob_id)
            if ref is None:
                raise FormatError(f"blob {blob.blob_id} is referenced but is no layer of this image")
            toc_digest, toc_size = read_toc_digest(ref.path)
            blobs.append(
                replace(
                    blob,
                    features=blob.features & ~BLOB_INLINED_FS_META,
                    toc_digest=toc_digest,
                    toc_size=toc_size,
                    meta_digest=bytes.fromhex(_hex(ref.digest)),
                    meta_size=ref.size,
                )
            )
        bootstrap = Bootstrap(
            merged.root,
            BootstrapSettings(
                chunk_size=merged.chunk_size,
                compressor=merged.compressor,
                digester=merged.digester,
                blobs=blobs,
                prefetch_patterns=self.prefetch_patterns,
                always_has_xattr=True,
            ),
            merged.refs,
        )
        metas = {}
        for blob in blobs:
            meta = workdir / f"{blob.blob_id}.blob.meta"
            if write_blob_meta_file(refs[blob.blob_id].path, meta):
                metas[blob.blob_id] = meta
        return self._additions(workdir, bootstrap, metas, [])

    def _additions(
        self, workdir: Path, bootstrap: Bootstrap, metas: Mapping[str, Path], dict_layers: Sequence[LayerBlob]
    ) -> ImageAdditions:
        boot_path = workdir / "image.boot"
        with boot_path.open("wb") as boot_file:
            bootstrap.write(boot_file)
        del bootstrap
        written = write_bootstrap_layer(workdir / "nydus-bootstrap.tar.gz", boot_path, metas)
        boot_path.unlink()
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


def _load_layer_bootstrap(blob: Path, blob_id: str, workdir: Path, refs: BlobRefs) -> LoadedBootstrap:
    with open_blob_bootstrap(blob, workdir, _BOOTSTRAP_IN_MEMORY) as boot:
        return load_bootstrap(boot, blob_id, refs)


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
