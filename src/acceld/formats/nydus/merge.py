"""Merge per-layer trees into the image tree with OCI whiteouts and opaque directories (§7.2).

Unlike nydus-image, whiteouts in the lowest layer are dropped too, and a directory that a layer
only implies (no tar entry) keeps the attributes of the layer below — what an OCI runtime does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from acceld.formats.driver import FormatError
from acceld.formats.nydus.layout import PLACEHOLDER_BLOB_ID, BlobInfo
from acceld.formats.nydus.load import LoadedBootstrap
from acceld.formats.nydus.tree import NO_XATTRS, OPAQUE_MARKER, BlobRefs, Inode, directories, new_dir

WHITEOUT_PREFIX = b".wh."


@dataclass(frozen=True)
class LayerBootstrap:
    blob_id: str  # hex digest of the layer's Nydus blob
    bootstrap: LoadedBootstrap  # loaded with `own_blob_id=blob_id`


@dataclass
class MergedImage:
    root: Inode
    refs: BlobRefs
    blobs: list[BlobInfo]
    chunk_size: int
    compressor: str
    digester: str


def _adopt_attributes(target: Inode, source: Inode) -> None:
    target.mode, target.uid, target.gid = source.mode, source.uid, source.gid
    target.mtime, target.xattrs, target.implicit = source.mtime, dict(source.xattrs) or NO_XATTRS, False


def _apply_dir(lower: Inode, upper: Inode) -> None:
    fresh = not lower.children  # every name of `upper` is new to it
    if not upper.implicit:
        _adopt_attributes(lower, upper)
    if fresh and not upper.children.records_may_contain(WHITEOUT_PREFIX):
        lower.children.take_records(upper.children)  # the files of a directory new to the image
    if OPAQUE_MARKER in upper.children:
        lower.children.clear()
    for name in upper.children:
        if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE_MARKER:
            lower.children.pop(name[len(WHITEOUT_PREFIX) :], None)
    for name, child in upper.children.items():
        if name.startswith(WHITEOUT_PREFIX):
            continue
        if isinstance(child, Inode) and child.is_dir:
            existing = lower.children.get(name)  # (only a directory's matters: a file replaces it)
            if isinstance(existing, Inode) and existing.is_dir:
                _apply_dir(existing, child)
                continue
            created = new_dir(implicit=True)
            _apply_dir(created, child)
            # even a directory implied only by whiteouts below it exists: runtimes create it to hold them
            lower.children[name] = created
        elif fresh:
            lower.children.insert(name, child)
        else:
            lower.children[name] = child
    upper.children.clear()  # applied: a layer's tree is used up as it is merged


def merge_layers(layers: Sequence[LayerBootstrap]) -> MergedImage:
    """Lowest layer first; their bootstraps were loaded with one `BlobRefs`. The layers' trees are
    used up (emptied) on the way."""
    if not layers:
        raise FormatError("no Nydus layers to merge")
    first = layers[0].bootstrap
    if any(layer.bootstrap.refs is not first.refs for layer in layers):
        raise AssertionError("layer bootstraps to merge must share their BlobRefs")
    own: list[BlobInfo] = []
    referenced: dict[str, BlobInfo] = {}
    root = new_dir(implicit=True)
    for layer in layers:
        loaded = layer.bootstrap
        if (loaded.chunk_size, loaded.digester) != (first.chunk_size, first.digester):
            raise FormatError("layers were converted with different chunk sizes or digesters")
        for blob in loaded.blobs:
            if blob.blob_id == layer.blob_id:
                if all(blob.blob_id != known.blob_id for known in own):  # byte-identical layers share a blob
                    own.append(blob)
            elif blob.blob_id == PLACEHOLDER_BLOB_ID:
                raise FormatError("per-layer bootstrap was loaded without its blob id")
            else:
                referenced.setdefault(blob.blob_id, blob)
        _apply_dir(root, loaded.root)
    for directory in directories(root):
        directory.implicit = False
    own_ids = {blob.blob_id for blob in own}
    blobs = own + [blob for blob_id, blob in referenced.items() if blob_id not in own_ids]
    return MergedImage(root, first.refs, blobs, first.chunk_size, first.compressor, first.digester)
