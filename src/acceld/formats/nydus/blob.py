"""The per-layer Nydus blob writer (§4, §6): tar stream in, "data | tar header" blob stream out.

Chunks are digested and compressed by worker threads (zstd, lz4 and the hashes release the
GIL) and written strictly in input order, so the stream is produced in one sequential pass.
Only metadata (tree, chunk-info array, digests) is kept in memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from acceld.formats.driver import FormatError
from acceld.formats.nydus.bootstrap import Bootstrap, BootstrapSettings, store_bootstrap
from acceld.formats.nydus.chunkdict import ChunkDict
from acceld.formats.nydus.codec import chunk_digest, compress, make_compressor
from acceld.formats.nydus.digestindex import DigestIndex
from acceld.formats.nydus.layout import (
    BLOB_META_HEADER_SIZE,
    BLOCK,
    LAYER_BLOB_FEATURES,
    PLACEHOLDER_BLOB_ID,
    TOC_ENTRY_SIZE,
    BlobInfo,
    align,
    gnu_tar_header,
    pack_blob_meta_header,
    pack_ci_v1,
    pack_toc_entry,
)
from acceld.formats.nydus.options import NydusOptions
from acceld.formats.nydus.tarball import tree_from_tar
from acceld.formats.nydus.tree import Chunk, Inode, chunks_of

_WINDOW_BYTES = 24 << 20
_WORKERS = 2
_BATCH_BYTES = 1 << 20  # chunks go to the workers in batches of about this much data
_BATCH_CHUNKS = 64  # or of this many chunks (the placeholders of a batch live until it is resolved)
_PENDING = "pending"  # blob id of a chunk whose place in the blob is not decided yet


@dataclass(frozen=True)
class LayerBlobResult:
    digest: str  # "sha256:<hex>" of the whole stream
    size: int
    chunk_count: int
    stored_bytes: int  # compressed chunk bytes written to this blob
    dict_blob_ids: tuple[str, ...]  # chunk-dict blobs this layer references


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.sha256.update(data)
        self.position += len(data)


_local = threading.local()


def _digest_and_compress(
    data: bytes, options: NydusOptions, skip_digests: Collection[bytes]
) -> tuple[bytes, bytes | None]:
    digest = chunk_digest(data, options.digester)
    if digest in skip_digests:
        return digest, None
    context: Any = getattr(_local, "compressor", None)
    if context is None:
        context = _local.compressor = make_compressor(options.compressor)
    return digest, compress(data, options.compressor, context)


def _digest_and_compress_all(
    batch: list[bytes], options: NydusOptions, skip_digests: Collection[bytes]
) -> list[tuple[bytes, bytes | None]]:
    return [_digest_and_compress(data, options, skip_digests) for data in batch]


class _ChunkWriter:
    """Implements `tarball.ChunkStore`: hands out placeholders, resolves them in input order.

    Chunks are digested and compressed by the worker threads in batches of up to `_BATCH_BYTES`
    or `_BATCH_CHUNKS` (one job per small file would cost more than its work), so the thread
    reading the tar only parses it. A file's placeholders are replaced as soon as its last chunk
    is resolved: at most a window of batches of them exist at any time.
    """

    def __init__(self, out: _HashingWriter, options: NydusOptions, chunk_dict: ChunkDict | None) -> None:
        self.out = out
        self.options = options
        self.chunk_dict = chunk_dict
        self.skip: Collection[bytes] = chunk_dict.chunks if chunk_dict is not None else ()
        self.pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="nydus-chunk")
        self.pending: deque[tuple[Future[list[tuple[bytes, bytes | None]]], list[bytes]]] = deque()
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.window = max(_WORKERS + 1, _WINDOW_BYTES // max(options.chunk_size, _BATCH_BYTES))
        self.added = 0  # chunks handed to `add`
        self.unplaced: deque[tuple[int, Inode]] = deque()  # (its last chunk's number, file) with placeholders
        self.resolved: list[Chunk] = []  # by the number of the `add` call
        self.index = DigestIndex()  # the digests of this blob's chunks, by CI index
        self.distinct: list[Chunk] = []  # by CI index
        self.dict_blob_ids: dict[str, None] = {}
        self.ci = bytearray()
        self.digests = self.index.digests
        self.uncompressed_end = 0
        self.stored = 0
        self.count = 0  # distinct chunks, known after `finish`

    def add(self, data: bytes) -> Chunk:
        self.batch.append(data)
        self.batch_bytes += len(data)
        self.added += 1
        if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_CHUNKS:
            self._submit()
        return Chunk(b"", _PENDING, self.added - 1, 0, 0, 0, len(data))

    def placed(self, node: Inode) -> None:
        """`node.chunks` now holds the chunks the latest `add` calls returned for it."""
        if node.chunks and self.added > len(self.resolved):
            self.unplaced.append((self.added - 1, node))
            while self.pending and self.pending[0][0].done():
                self._resolve_one()

    def _submit(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self.pending.append(
            (self.pool.submit(_digest_and_compress_all, batch, self.options, self.skip), batch)
        )
        while len(self.pending) > self.window:
            self._resolve_one()

    def _resolve_one(self) -> None:
        future, batch = self.pending.popleft()
        for (digest, packed), data in zip(future.result(), batch, strict=True):
            self.resolved.append(self._resolve(digest, packed, data))
        resolved = len(self.resolved)
        while self.unplaced and self.unplaced[0][0] < resolved:
            node = self.unplaced.popleft()[1]
            node.chunks = chunks_of(
                [self.resolved[c.index] if c.blob_id == _PENDING else c for c in node.chunks]
            )

    def _resolve(self, digest: bytes, packed: bytes | None, data: bytes) -> Chunk:
        number = self.index.find(digest)
        chunk = self.distinct[number] if number >= 0 else None
        if chunk is None and self.chunk_dict is not None:
            chunk = self.chunk_dict.find(digest, len(data))
            if chunk is not None:
                self.dict_blob_ids[chunk.blob_id] = None
        if chunk is None:
            if packed is None and self.chunk_dict is not None and digest in self.chunk_dict.chunks:
                packed = compress(data, self.options.compressor)  # dict entry of another size
            stored = data if packed is None else packed
            chunk = Chunk(
                digest=digest,
                blob_id=PLACEHOLDER_BLOB_ID,
                index=len(self.distinct),
                compressed_offset=self.out.position,
                compressed_size=len(stored),
                uncompressed_offset=self.uncompressed_end,
                uncompressed_size=len(data),
            )
            self.out.write(stored)
            self.stored += len(stored)
            self.uncompressed_end += align(len(data), BLOCK)
            self.ci += pack_ci_v1(
                chunk.uncompressed_offset,
                chunk.uncompressed_size,
                chunk.compressed_offset,
                chunk.compressed_size,
            )
            self.index.add(digest)
            self.distinct.append(chunk)
        return chunk

    def finish(self) -> None:
        try:
            if self.batch:
                self._submit()
            while self.pending:
                self._resolve_one()
        finally:
            self.close()
        if self.unplaced:
            raise AssertionError("a file's chunks were never resolved")
        self.count = len(self.distinct)
        if self.count > 1 << 24:
            raise FormatError("layer needs more than 2^24 distinct chunks")
        self.index.release()
        self.distinct.clear()
        self.resolved.clear()

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def write_layer_blob(
    tar: IO[bytes], out: IO[bytes], options: NydusOptions, chunk_dict: ChunkDict | None = None
) -> LayerBlobResult:
    """Convert one decompressed layer tar into a Nydus blob stream written sequentially to `out`."""
    if chunk_dict is not None:
        chunk_dict.check_compatible(options)
    writer = _HashingWriter(out)
    chunks = _ChunkWriter(writer, options, chunk_dict)
    try:
        root = tree_from_tar(tar, chunks, options.chunk_size)
    except BaseException:
        chunks.close()
        raise
    chunks.finish()

    toc: list[bytes] = []
    blobs: list[BlobInfo] = []
    count = chunks.count
    if count:
        writer.write(gnu_tar_header("image.blob", chunks.stored))
        toc.append(
            pack_toc_entry(
                "image.blob", "none", writer.sha256.copy().digest(), 0, chunks.stored, chunks.uncompressed_end
            )
        )
        ci = bytes(chunks.ci)
        packed_ci = compress(ci, options.compressor)
        ci_compressor = options.compressor if packed_ci is not None else "none"
        ci_data = packed_ci if packed_ci is not None else ci
        ci_offset = writer.position
        header = pack_blob_meta_header(
            LAYER_BLOB_FEATURES, ci_compressor, count, ci_offset, len(ci_data), len(ci)
        )
        writer.write(ci_data)
        writer.write(header)
        writer.write(gnu_tar_header("blob.meta", len(ci_data) + BLOB_META_HEADER_SIZE))
        toc.append(
            pack_toc_entry(
                "blob.meta", ci_compressor, hashlib.sha256(ci).digest(), ci_offset, len(ci_data), len(ci)
            )
        )
        toc.append(
            pack_toc_entry(
                "blob.meta.header",
                "none",
                hashlib.sha256(header).digest(),
                ci_offset + len(ci_data),
                BLOB_META_HEADER_SIZE,
                BLOB_META_HEADER_SIZE,
            )
        )
        digests_offset = writer.position
        writer.write(bytes(chunks.digests))
        writer.write(gnu_tar_header("blob.digest", len(chunks.digests)))
        toc.append(
            pack_toc_entry(
                "blob.digest",
                "none",
                hashlib.sha256(chunks.digests).digest(),
                digests_offset,
                len(chunks.digests),
                len(chunks.digests),
            )
        )
        blobs.append(
            BlobInfo(
                blob_id=PLACEHOLDER_BLOB_ID,
                chunk_size=options.chunk_size,
                chunk_count=count,
                compressor=options.compressor,
                digester=options.digester,
                features=LAYER_BLOB_FEATURES,
                compressed_size=writer.position,
                uncompressed_size=chunks.uncompressed_end,
                ci_compressor=ci_compressor,
                ci_offset=ci_offset,
                ci_compressed_size=len(ci_data),
                ci_uncompressed_size=len(ci),
            )
        )
    if chunk_dict is not None:
        blobs += [chunk_dict.blobs[blob_id] for blob_id in chunks.dict_blob_ids]

    bootstrap = Bootstrap(
        root,
        BootstrapSettings(
            chunk_size=options.chunk_size,
            compressor=options.compressor,
            digester=options.digester,
            blobs=blobs,
            prefetch_patterns=options.prefetch_patterns,
        ),
    )
    boot_offset = writer.position
    boot_compressor, boot_stored, boot_digest = store_bootstrap(bootstrap, writer)
    writer.write(gnu_tar_header("image.boot", boot_stored))
    toc.append(
        pack_toc_entry("image.boot", boot_compressor, boot_digest, boot_offset, boot_stored, bootstrap.size)
    )
    writer.write(b"".join(toc))
    writer.write(gnu_tar_header("rafs.blob.toc", TOC_ENTRY_SIZE * len(toc)))
    return LayerBlobResult(
        digest="sha256:" + writer.sha256.hexdigest(),
        size=writer.position,
        chunk_count=count,
        stored_bytes=chunks.stored,
        dict_blob_ids=tuple(chunks.dict_blob_ids),
    )
