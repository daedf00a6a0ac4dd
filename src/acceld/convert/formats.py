"""Each converted format as `acceld check` reads it: how to recognise it and how to read its tree.

A format's `read_tree` validates the layers with that format's own reader (every structure and
digest the format carries) and returns the image's merged filesystem tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from acceld.convert.errors import ConvertError
from acceld.formats.driver import FormatError
from acceld.formats.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from acceld.formats.fstree import FsTree
from acceld.formats.limits import Limits
from acceld.oci.digest import digest_hex
from acceld.oci.models import Descriptor, Manifest

NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_BLOB = "containerd.io/snapshot/nydus-blob"
NYDUS_REF = "containerd.io/snapshot/nydus-ref"  # a zran ref blob names the source gzip layer it indexes
ESTARGZ_TOC = TOC_DIGEST_ANNOTATION
# Entries of an eStargz layer tar that are format metadata, not files of the image.
ESTARGZ_METADATA_FILES = ("/stargz.index.json", "/.prefetch.landmark", "/.no.prefetch.landmark")
ESTARGZ_UNCOMPRESSED_SIZE = UNCOMPRESSED_SIZE_ANNOTATION
ZSTD_CHUNKED_TOC = "io.github.containers.zstd-chunked.manifest-checksum"


@dataclass(frozen=True)
class LayerFile:
    """A converted layer on local disk with its manifest descriptor and config diff_id."""

    path: Path
    descriptor: Descriptor
    diff_id: str
    referenced: Path | None = None  # the source layer a Nydus zran ref blob reads its chunks from


class FormatReader(Protocol):
    ignored_fields: tuple[str, ...]  # Node fields the format does not keep
    mtime_tolerance: int  # seconds an mtime may differ from the source's (rounding of the format)

    def read_tree(self, layers: Sequence[LayerFile], workdir: Path, limits: Limits) -> FsTree: ...


class NydusReader:
    ignored_fields: tuple[str, ...] = ()
    mtime_tolerance = 0

    def read_tree(self, layers: Sequence[LayerFile], workdir: Path, limits: Limits) -> FsTree:
        from acceld.formats.nydus.reader import ManifestLayer, RafsImage, check_image_layers

        *blobs, bootstrap = layers
        referenced = {
            digest_hex(named): blob.referenced
            for blob in blobs
            if (named := (blob.descriptor.annotations or {}).get(NYDUS_REF)) and blob.referenced is not None
        }
        if referenced:  # zran: the image-level rules pair every ref blob with its gzip layer
            manifest_layers = [
                ManifestLayer(
                    layer.path,
                    layer.descriptor.media_type,
                    layer.descriptor.digest,
                    layer.diff_id,
                    layer.descriptor.annotations or {},
                )
                for layer in layers
            ]
            return check_image_layers(manifest_layers, referenced).to_fstree(workdir=workdir)
        files = {digest_hex(blob.descriptor.digest): blob.path for blob in blobs}
        image = RafsImage.from_bootstrap_layer(bootstrap.path, files, limits, workdir)
        image.verify()
        return image.to_fstree(workdir=workdir)


class ZstdChunkedReader:
    ignored_fields: tuple[str, ...] = ()
    mtime_tolerance = 0

    def read_tree(self, layers: Sequence[LayerFile], workdir: Path, limits: Limits) -> FsTree:
        from acceld.formats.zstdchunked.reader import ZstdChunkedReader as LayerReader
        from acceld.formats.zstdchunked.reader import tree_from_readers

        readers = []
        try:
            for layer in layers:
                reader = LayerReader(layer.path, layer.descriptor.annotations or {}, limits, workdir)
                readers.append(reader)
                reader.verify(diff_id=layer.diff_id)
            return tree_from_readers(readers, workdir)
        finally:
            for reader in readers:
                reader.close()


class EstargzReader:
    ignored_fields: tuple[str, ...] = ()
    # The TOC rounds modtime to the nearest second (as the Go writer does); trees floor it.
    mtime_tolerance = 1

    def read_tree(self, layers: Sequence[LayerFile], workdir: Path, limits: Limits) -> FsTree:
        from acceld.formats.estargz.reader import EstargzLayer

        tree = FsTree(workdir)
        for layer in layers:
            annotations = layer.descriptor.annotations or {}
            with layer.path.open("rb") as blob, EstargzLayer(blob, limits, workdir) as esgz:
                report = esgz.verify(annotations.get(ESTARGZ_TOC))
                where = f"layer {layer.descriptor.digest}"
                _expect(report.diff_id, layer.diff_id, f"{where}: diff_id")
                size = annotations.get(ESTARGZ_UNCOMPRESSED_SIZE)
                if size is not None:
                    _expect(str(report.uncompressed_size), size, f"{where}: uncompressed size")
                esgz.apply_to(tree)
        return tree


def _expect(found: str, declared: str, what: str) -> None:
    if found != declared:
        raise FormatError(f"{what} is {found}, the image declares {declared}")


FORMATS: dict[str, FormatReader] = {
    "estargz": EstargzReader(),
    "nydus": NydusReader(),
    "zstdchunked": ZstdChunkedReader(),
}


def _annotated(manifest: Manifest, key: str) -> bool:
    return any(key in (layer.annotations or {}) for layer in manifest.layers)


def is_nydus_image(manifest: Manifest) -> bool:
    """True for a Nydus image: its last layer is the bootstrap."""
    layers = manifest.layers
    return bool(layers) and (layers[-1].annotations or {}).get(NYDUS_BOOTSTRAP) == "true"


def detect_format(manifest: Manifest) -> str:
    """The format of a converted image, from the annotations its layers carry."""
    if is_nydus_image(manifest):
        found = "nydus"
    elif _annotated(manifest, ZSTD_CHUNKED_TOC):
        found = "zstdchunked"
    elif _annotated(manifest, ESTARGZ_TOC):
        found = "estargz"
    else:
        raise ConvertError("not a converted image: no Nydus, zstd:chunked or eStargz layer annotations")
    if found not in FORMATS:
        raise ConvertError(f"checking {found} images is not supported yet")
    return found
