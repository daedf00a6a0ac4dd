"""A chunk dictionary (§9.1): the chunks of a previously converted Nydus image, by digest.

The dictionary is given as a path to that image's bootstrap (raw `image.boot` or its bootstrap
layer); its blobs must sit in the same directory, each named by its hex digest, so converted
images can carry the blobs they reference.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from acceld.formats.driver import FormatError
from acceld.formats.nydus.bootstrap_layer import read_bootstrap_file
from acceld.formats.nydus.layout import BLOB_INLINED_FS_META, PLACEHOLDER_BLOB_ID, BlobInfo
from acceld.formats.nydus.load import load_bootstrap
from acceld.formats.nydus.options import NydusOptions
from acceld.formats.nydus.tree import Chunk, record_chunk, walk


@dataclass
class ChunkDict:
    path: Path
    chunk_size: int
    digester: str
    chunks: dict[bytes, Chunk]
    blobs: dict[str, BlobInfo]

    @classmethod
    def load(cls, path: Path) -> ChunkDict:
        if not path.is_file():
            raise FormatError(f"chunk dict {path} does not exist")
        loaded = load_bootstrap(io.BytesIO(read_bootstrap_file(path)))
        chunks: dict[bytes, Chunk] = {}
        for _, node in walk(loaded.root):
            if isinstance(node, bytes):
                record = record_chunk(node, loaded.refs)
                node_chunks: tuple[Chunk, ...] = () if record is None else (record,)
            else:
                node_chunks = tuple(node.chunks)
            for chunk in node_chunks:
                chunks.setdefault(chunk.digest, chunk)
        blobs = {}
        for blob in loaded.blobs:
            if blob.blob_id == PLACEHOLDER_BLOB_ID:
                raise FormatError("chunk dict must be a merged image bootstrap, not a per-layer one")
            blobs[blob.blob_id] = BlobInfo(
                **{**blob.__dict__, "features": blob.features & ~BLOB_INLINED_FS_META}
            )
        return cls(path, loaded.chunk_size, loaded.digester, chunks, blobs)

    def check_compatible(self, options: NydusOptions) -> None:
        if self.chunk_size != options.chunk_size or self.digester != options.digester:
            raise FormatError(
                f"chunk dict uses chunk size {self.chunk_size:#x} and {self.digester}, conversion uses "
                f"{options.chunk_size:#x} and {options.digester}"
            )

    def find(self, digest: bytes, size: int) -> Chunk | None:
        chunk = self.chunks.get(digest)
        return chunk if chunk is not None and chunk.uncompressed_size == size else None

    def blob_path(self, blob_id: str) -> Path:
        path = self.path.parent / blob_id
        if not path.is_file():
            raise FormatError(f"chunk dict blob {blob_id} is missing next to {self.path.name}")
        return path
