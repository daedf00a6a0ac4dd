"""The per-layer Nydus blob writer (§4, §6): tar stream in, "data | tar header" blob stream out.

Chunks are digested and compressed by worker threads (zstd, lz4 and the hashes release the
GIL) and written strictly in input order, so the stream is produced in one sequential pass.
Only metadata is kept in memory: the tree (whose file records name this blob's chunks by CI index),
the chunk-info array and the digests' first bytes (the digests wait in a temp file).
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from acceld.formats.driver import FormatError, HashingSink
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
    unpack_ci_v1,
)
from acceld.formats.nydus.options import NydusOptions
from acceld.formats.nydus.tarball import tree_from_tar
from acceld.formats.nydus.tree import PENDING_BLOB_ID, BlobRefs, Chunk, Inode, chunks_of
from acceld.formats.targuard import TarGuard

_WINDOW_BYTES = 24 << 20
_WORKERS = 2
_BATCH_BYTES = 1 << 20  # chunks go to the workers in batches of about this much data
_BATCH_CHUNKS = 64  # or of this many chunks (the placeholders of a batch live until it is resolved)
_KEEP_RESOLVED = 4096  # resolved placeholder numbers no file needs are dropped in runs of this many


@dataclass(frozen=True)
class LayerBlobResult:
    digest: str  # "sha256:<hex>" of the whole stream
    size: int
    chunk_count: int
    stored_bytes: int  # compressed chunk bytes written to this blob
    dict_blob_ids: tuple[str, ...]  # chunk-dict blobs this layer references


class _HashingWriter:
    """Writes to `out`, counting and hashing (sha256) what it writes — or leaving the hash to
    `out` when it hashes what it is written anyway (a `HashingSink` nothing was written to yet)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sink = out if isinstance(out, HashingSink) and out.tell() == 0 else None
        self.sha256 = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.write(data)
        if self.sink is None:
            self.sha256.update(data)
        self.position += len(data)

    def digest(self) -> bytes:
        """The sha256 of what was written so far."""
        return self.sha256.copy().digest() if self.sink is None else self.sink.sha256_digest()


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
    """Implements `tarball.ChunkStore`: hands out placeholders, resolves them in input order; and
    `tree.ChunkTable` of the blob it writes, from its CI array and digest index.

    Chunks are digested and compressed by the worker threads in batches of up to `_BATCH_BYTES`
    or `_BATCH_CHUNKS` (one job per small file would cost more than its work), so the thread
    reading the tar only parses it. A file's placeholders are replaced as soon as its last chunk
    is resolved: at most a window of batches of them exist at any time.
    """

    def __init__(
        self, out: _HashingWriter, options: NydusOptions, chunk_dict: ChunkDict | None, workdir: Path
    ) -> None:
        self.out = out
        self.workdir = workdir  # where the temp files of the blob's writing go
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
        # by the number of the `add` call less `resolved_base`: a CI index, or -1 - n for
        # `dict_chunks[n]` (chunk objects are made from the CI and digest tables when needed: a
        # million small files, a million chunks); only numbers a file with placeholders may still
        # need are kept
        self.resolved = array("q")
        self.resolved_base = 0
        self.file_start = 0  # the number of the first chunk of the file being read
        self.dict_chunks: list[Chunk] = []
        self.index = DigestIndex(workdir)  # the digests of this blob's chunks, by CI index
        self.dict_blob_ids: dict[str, None] = {}
        self.ci = bytearray()
        self.uncompressed_end = 0
        self.stored = 0
        self.count = 0  # distinct chunks, known after `finish`

    def add(self, data: bytes) -> Chunk:
        self.batch.append(data)
        self.batch_bytes += len(data)
        self.added += 1
        if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_CHUNKS:
            self._submit()
        return Chunk.from_packed(Chunk.pack(b"", self.added - 1, 0, 0, 0, len(data)), PENDING_BLOB_ID)

    def placed(self, node: Inode) -> None:
        """`node.chunks` now holds the chunks the latest `add` calls returned for it (at least one)."""
        if self.added > self.resolved_base + len(self.resolved):
            self.unplaced.append((self.added - 1, node))
            while self.pending and self.pending[0][0].done():
                self._resolve_one()
        self.file_start = self.added

    def _submit(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self.pending.append(
            (self.pool.submit(_digest_and_compress_all, batch, self.options, self.skip), batch)
        )
        while len(self.pending) > self.window:
            self._resolve_one()

    def _resolve_one(self) -> None:
        future, batch = self.pending.popleft()
        pieces: list[bytes] = []  # the batch's stored chunks, written (and hashed) at once
        if self.chunk_dict is None:
            self._place_batch(future.result(), batch, pieces)
        else:
            for (digest, packed), data in zip(future.result(), batch, strict=True):
                self.resolved.append(self._resolve(digest, packed, data, pieces))
        if pieces:
            self.out.write(b"".join(pieces))
        base = self.resolved_base
        numbers = self.resolved
        resolved = base + len(numbers)
        unplaced = self.unplaced
        while unplaced and unplaced[0][0] < resolved:
            node = unplaced.popleft()[1]
            chunks = node.chunks
            if isinstance(chunks, Chunk):  # a one-chunk file (most): `add` made it a placeholder
                node.chunks = self.chunk(numbers[chunks.index - base])
                continue
            node.chunks = chunks_of(
                [self.chunk(numbers[c.index - base]) if c.blob_id == PENDING_BLOB_ID else c for c in chunks]
            )
        # a file's placeholders are consecutive numbers ending at its last: older ones are done
        needed = min(resolved, self.file_start)
        if self.unplaced:
            last, node = self.unplaced[0]
            needed = min(needed, last + 1 - len(node.chunks))
        if needed - base >= _KEEP_RESOLVED:
            del self.resolved[: needed - base]
            self.resolved_base = needed

    def _place_batch(
        self, results: list[tuple[bytes, bytes | None]], batch: list[bytes], pieces: list[bytes]
    ) -> None:
        """`_resolve` of each chunk of a batch, without a chunk dictionary (the usual case)."""
        number_of, store, numbers = self.index.find_or_add, self._store, self.resolved
        for (digest, packed), data in zip(results, batch, strict=True):
            number = number_of(digest)
            if number < 0:  # a new chunk
                number = ~number
                store(data, packed, pieces)
            numbers.append(number)

    def _resolve(self, digest: bytes, packed: bytes | None, data: bytes, pieces: list[bytes]) -> int:
        """Place one chunk: its CI index in this blob, or -1 - n for `dict_chunks[n]`; a new chunk's
        stored bytes are appended to `pieces`, which the caller writes after the chunks before."""
        number = self.index.find(digest)
        if number >= 0:
            return number
        if self.chunk_dict is not None:
            found = self.chunk_dict.find(digest, len(data))
            if found is not None:
                self.dict_blob_ids[found.blob_id] = None
                self.dict_chunks.append(found)
                return -len(self.dict_chunks)
            if packed is None and digest in self.chunk_dict.chunks:
                packed = compress(data, self.options.compressor)  # dict entry of another size
        self._store(data, packed, pieces)
        return self.index.add(digest)

    def _store(self, data: bytes, packed: bytes | None, pieces: list[bytes]) -> None:
        """A new chunk's CI entry; its stored bytes appended to `pieces`."""
        stored = data if packed is None else packed
        # the chunks begin the blob: a chunk's offset is what was stored before it
        self.ci += pack_ci_v1(self.uncompressed_end, len(data), self.stored, len(stored))
        pieces.append(stored)
        self.stored += len(stored)
        self.uncompressed_end += align(len(data), BLOCK)

    def chunk(self, number: int) -> Chunk:
        """The chunk `_resolve` numbered, made from the CI and digest tables."""
        if number < 0:
            return self.dict_chunks[-1 - number]
        return Chunk.from_packed(self.packed(number), PLACEHOLDER_BLOB_ID)

    def packed(self, index: int) -> bytes:
        uncompressed_offset, uncompressed_size, offset, size = unpack_ci_v1(self.ci, 16 * index)
        return Chunk.pack(
            self.index.digest(index), index, offset, size, uncompressed_offset, uncompressed_size
        )

    def head(self, index: int) -> int:
        return self.index.head(index)

    def placement(self, index: int) -> tuple[int, int]:
        return unpack_ci_v1(self.ci, 16 * index)[:2]

    def flush(self) -> None:
        if self.batch:
            self._submit()
        while self.pending:
            self._resolve_one()

    def finish(self) -> None:
        try:
            self.flush()
        finally:
            self.close()
        if self.unplaced:
            raise AssertionError("a file's chunks were never resolved")
        self.count = len(self.index)
        if self.count > 1 << 24:
            raise FormatError("layer needs more than 2^24 distinct chunks")
        self.index.release()
        self.dict_chunks.clear()
        del self.resolved[:]
        self.resolved_base = self.added

    def close(self) -> None:
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def write_layer_blob(
    tar: IO[bytes],
    out: IO[bytes],
    options: NydusOptions,
    workdir: Path,
    chunk_dict: ChunkDict | None = None,
    guard: TarGuard | None = None,
) -> LayerBlobResult:
    """Convert one decompressed layer tar into a Nydus blob stream written sequentially to `out`
    (temp files go in `workdir`; `guard`, the TarGuard watching `tar`, is handed its headers)."""
    if chunk_dict is not None:
        chunk_dict.check_compatible(options)
    chunks = _ChunkWriter(_HashingWriter(out), options, chunk_dict, workdir)
    with chunks.index:
        return _write_layer_blob(tar, chunks, options, chunk_dict, guard)


def _write_layer_blob(
    tar: IO[bytes],
    chunks: _ChunkWriter,
    options: NydusOptions,
    chunk_dict: ChunkDict | None,
    guard: TarGuard | None,
) -> LayerBlobResult:
    writer = chunks.out
    refs = BlobRefs()
    refs.hold(PLACEHOLDER_BLOB_ID, chunks)  # the file records of this blob's chunks name them by index
    try:
        root = tree_from_tar(tar, chunks, refs, options.chunk_size, guard=guard)
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
            pack_toc_entry("image.blob", "none", writer.digest(), 0, chunks.stored, chunks.uncompressed_end)
        )
        ci = chunks.ci  # stays: the layout below reads the records' chunks from it
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
        ci_stored_size, ci_size = len(ci_data), len(ci)
        del packed_ci, ci_data
        digests_offset = writer.position
        digests_sha256 = hashlib.sha256()
        for piece in chunks.index.pieces():
            writer.write(piece)
            digests_sha256.update(piece)
        del piece
        digests_size = writer.position - digests_offset
        writer.write(gnu_tar_header("blob.digest", digests_size))
        toc.append(
            pack_toc_entry(
                "blob.digest", "none", digests_sha256.digest(), digests_offset, digests_size, digests_size
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
                ci_compressed_size=ci_stored_size,
                ci_uncompressed_size=ci_size,
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
        refs,
    )
    boot_offset = writer.position
    boot_compressor, boot_stored, boot_digest = store_bootstrap(bootstrap, writer, chunks.workdir)
    writer.write(gnu_tar_header("image.boot", boot_stored))
    toc.append(
        pack_toc_entry("image.boot", boot_compressor, boot_digest, boot_offset, boot_stored, bootstrap.size)
    )
    writer.write(b"".join(toc))
    writer.write(gnu_tar_header("rafs.blob.toc", TOC_ENTRY_SIZE * len(toc)))
    return LayerBlobResult(
        digest="sha256:" + writer.digest().hex(),
        size=writer.position,
        chunk_count=count,
        stored_bytes=chunks.stored,
        dict_blob_ids=tuple(chunks.dict_blob_ids),
    )
