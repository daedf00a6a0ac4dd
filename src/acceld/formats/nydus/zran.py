"""The zran (OCI-ref) layer writer: a gzip layer in, its Nydus "ref" blob out (nydus-zran.md §4 to §6).

One pass over the compressed layer: the checkpoint reader inflates it with `Z_BLOCK`, the tar
parser reads through it, and every chunk of file data is placed in a zran context — a deflate block
boundary before the chunk from which the chunk can be inflated alone. Contexts are cut as the
reference does (§6.3); a chunk whose content already occurred in the layer reuses that chunk. No
file data is written: the ref blob holds the blob meta (CI v2 ‖ contexts ‖ dictionaries, zstd),
the chunk digests, the per-layer bootstrap and the TOC.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from acceld.formats.checkpoints import Checkpoint, CheckpointingReader, WindowStore
from acceld.formats.driver import FormatError
from acceld.formats.nydus.bootstrap import Bootstrap, BootstrapSettings, store_bootstrap
from acceld.formats.nydus.codec import ZSTD_LEVEL
from acceld.formats.nydus.digestindex import DigestIndex
from acceld.formats.nydus.layout import (
    BLOB_META_HEADER_SIZE,
    BLOCK,
    MAX_CHUNKS_PER_BLOB,
    TAR_BLOCK,
    TOC_ENTRY_SIZE,
    ZRAN_BLOB_FEATURES,
    BlobInfo,
    align,
    gnu_tar_header,
    pack_blob_meta_header,
    pack_ci_v2_zran,
    pack_toc_entry,
    pack_zran_context,
)
from acceld.formats.nydus.tarball import tree_from_tar
from acceld.formats.nydus.tree import BlobRefs, Chunk, Inode

WINDOW = 32768
CONTEXT_SIZE = 40
COPY_SIZE = 1 << 20
MAX_CONTEXT_OUTPUT = 16 << 20  # nydusd refuses to inflate more per context
MAX_CHUNK_COMPRESSED = (1 << 24) - 1  # CI v2 compressed size field
DIGESTER = "sha256"  # forced for zran blobs, as by nydus-image


@dataclass(frozen=True)
class ZranBlobResult:
    digest: str  # "sha256:<hex>" of the ref blob
    size: int
    chunk_count: int
    context_count: int
    gzip_size: int
    toc_digest: bytes  # sha256 of the TOC entries without their tar header (nydus-snapshotter's rule)
    toc_size: int  # TOC entries + tar header


@dataclass(frozen=True)
class _Boundary:
    """A deflate block boundary with what a context starting there needs."""

    checkpoint: Checkpoint
    window: bytes
    member: int


@dataclass
class _Context:
    in_offset: int
    out_offset: int
    ctx_byte: int
    ctx_bits: int
    dict_offset: int  # of its window in the dictionary table
    dict_size: int
    member: int
    in_len: int = 0
    out_len: int = 0

    def pack(self) -> bytes:
        return pack_zran_context(
            self.in_offset,
            self.out_offset,
            self.dict_offset,
            self.in_len,
            self.out_len,
            self.dict_size,
            self.ctx_byte,
            self.ctx_bits,
        )


class _BoundaryTracker:
    """The checkpoint policy: remember only the latest boundary (contexts are chosen per chunk)."""

    def __init__(self) -> None:
        self.latest: _Boundary | None = None
        self.member = 0
        self.member_out = 0  # uncompressed offset where the current gzip member starts

    def __call__(self, boundary: Checkpoint, reader: CheckpointingReader) -> bool:
        if boundary.member_start:
            self.member += 1
            self.member_out = boundary.uncompressed_offset
        size = min(WINDOW, boundary.uncompressed_offset - self.member_out)
        window = reader.window()[WINDOW - size :] if size else b""
        self.latest = _Boundary(boundary, window, self.member)
        return False


class _TarSource:
    """Full reads over the checkpoint reader, remembering where the latest read started."""

    def __init__(self, reader: CheckpointingReader, tracker: _BoundaryTracker) -> None:
        self.reader = reader
        self.tracker = tracker
        self.position = 0
        self.read_start: tuple[int, int, _Boundary | None] = (0, 0, None)

    def read(self, size: int) -> bytes:
        self.read_start = (self.reader.compressed_offset, self.position, self.tracker.latest)
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.reader.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        del buffer[got:]
        self.position += got
        return bytes(buffer)


class _ZranChunks:
    """Implements `tarball.ChunkStore`: one CI v2 entry per distinct chunk, contexts cut per §6.3."""

    def __init__(
        self,
        source: _TarSource,
        blob_id: str,
        chunk_size: int,
        dictionaries: IO[bytes],
        index: DigestIndex,
        workdir: Path,
    ) -> None:
        self.source = source
        self.workdir = workdir  # where the temp files of the blob's writing go
        self.dictionaries = dictionaries  # the dictionary table, spooled (32 KiB per context)
        self.dictionaries_size = 0
        self.blob_id = blob_id
        self.chunk_size = chunk_size
        self.min_comp = chunk_size // 2
        self.max_comp = chunk_size
        self.max_uncomp = 2 * chunk_size
        self.contexts: list[_Context] = []
        self.index = index  # the digests of this blob's chunks, by CI index
        self.distinct: list[Chunk] = []  # by CI index
        self.ci = bytearray()
        self.uncompressed_end = 0

    def placed(self, node: Inode) -> None:
        """Nothing to do: `add` returns every chunk where it lives."""

    def flush(self) -> None:
        """Nothing in flight."""

    def add(self, data: bytes) -> Chunk:
        in_start, out_start, boundary = self.source.read_start
        if self.source.position - out_start != len(data):
            raise AssertionError("zran chunk is not the data of the latest read")
        digest = hashlib.sha256(data).digest()
        existing = self.index.find(digest)
        if existing >= 0:
            return self.distinct[existing]
        if boundary is None:
            raise FormatError("gzip layer has no deflate block boundary before its first file data")
        number = self._context_for(in_start, out_start, boundary)
        context = self.contexts[number]
        in_end = self.source.reader.compressed_offset
        out_end = out_start + len(data)
        context.in_len = max(context.in_len, in_end - context.in_offset)
        context.out_len = out_end - context.out_offset
        if context.out_len > MAX_CONTEXT_OUTPUT or context.in_len >= 1 << 32:
            raise FormatError(
                f"zran context at gzip offset {context.in_offset} would inflate {context.out_len} bytes, "
                "above the 16 MiB nydusd allows (use a smaller chunk size)"
            )
        compressed_size = max(1, in_end - in_start)
        if compressed_size > MAX_CHUNK_COMPRESSED:
            raise FormatError(
                f"a chunk spans {compressed_size} gzip bytes, above 16 MiB (use a smaller chunk size)"
            )
        chunk = Chunk(
            digest=digest,
            blob_id=self.blob_id,
            index=len(self.distinct),
            compressed_offset=in_start,
            compressed_size=compressed_size,
            uncompressed_offset=self.uncompressed_end,
            uncompressed_size=len(data),
            zran=True,
        )
        if chunk.index >= MAX_CHUNKS_PER_BLOB:
            raise FormatError("layer needs more than 2^24 distinct chunks")
        self.ci += pack_ci_v2_zran(
            chunk.uncompressed_offset,
            chunk.uncompressed_size,
            chunk.compressed_offset,
            chunk.compressed_size,
            number,
            out_start - context.out_offset,
        )
        self.index.add(digest)
        self.uncompressed_end += align(len(data), BLOCK)
        self.distinct.append(chunk)
        return chunk

    def _context_for(self, in_pos: int, out_pos: int, boundary: _Boundary) -> int:
        """The context of a chunk starting at (in_pos, out_pos): the current one, or a new one at the
        latest block boundary (nydus-zran.md §6.3)."""
        if self.contexts:
            current = self.contexts[-1]
            first = boundary.checkpoint.compressed_offset == current.in_offset
            comp = in_pos - current.in_offset
            uncomp = out_pos - current.out_offset
            keep = boundary.member == current.member and (
                first
                or not (
                    comp >= self.max_comp // 2
                    or uncomp + self.chunk_size >= self.max_uncomp
                    or (comp > 2 * current.in_len and current.in_len > self.min_comp)
                )
            )
            if keep:
                return len(self.contexts) - 1
        point = boundary.checkpoint
        self.contexts.append(
            _Context(
                in_offset=point.compressed_offset,
                out_offset=point.uncompressed_offset,
                ctx_byte=point.previous_byte if point.bits else 0,
                ctx_bits=point.bits,
                dict_offset=self.dictionaries_size,
                dict_size=len(boundary.window),
                member=boundary.member,
            )
        )
        self.dictionaries.write(boundary.window)
        self.dictionaries_size += len(boundary.window)
        return len(self.contexts) - 1

    @property
    def zran_size(self) -> int:
        return CONTEXT_SIZE * len(self.contexts) + self.dictionaries_size

    def meta_pieces(self) -> Iterator[bytes]:
        """The uncompressed blob meta, piece by piece: CI v2 ‖ context table ‖ dictionaries."""
        yield bytes(self.ci)
        yield b"".join(context.pack() for context in self.contexts)
        self.dictionaries.seek(0)
        while piece := self.dictionaries.read(COPY_SIZE):
            yield piece


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.position = 0

    def write(self, data: bytes | bytearray) -> None:
        self.out.write(data)
        self.sha256.update(data)
        self.position += len(data)


def write_ref_blob(
    gzip_layer: IO[bytes],
    out: IO[bytes],
    layer_digest: str,
    chunk_size: int,
    workdir: Path,
    prefetch_patterns: tuple[str, ...] = ("/",),
) -> ZranBlobResult:
    """Index the gzip layer `gzip_layer` (whose digest is `layer_digest`) and write its ref blob to `out`
    (temp files in `workdir`)."""
    blob_id = layer_digest.removeprefix("sha256:")
    layer_hash = hashlib.sha256()
    tracker = _BoundaryTracker()
    with tempfile.TemporaryFile(dir=workdir) as dictionaries, DigestIndex(workdir) as index:
        with WindowStore(workdir) as windows:
            reader = CheckpointingReader(gzip_layer, tracker, windows, on_input=layer_hash.update)  # type: ignore[arg-type]
            try:
                source = _TarSource(reader, tracker)
                chunks = _ZranChunks(source, blob_id, chunk_size, dictionaries, index, workdir)
                refs = BlobRefs()
                root = tree_from_tar(source, chunks, refs, chunk_size, sparse_files=False)  # type: ignore[arg-type]
                reader.finish()
            finally:
                reader.close()
        if "sha256:" + layer_hash.hexdigest() != layer_digest:
            raise FormatError(
                f"gzip layer has digest sha256:{layer_hash.hexdigest()}, expected {layer_digest}"
            )
        return _write_blob(out, chunks, root, refs, reader.compressed_offset, prefetch_patterns)


def _write_meta(writer: _HashingWriter, chunks: _ZranChunks) -> tuple[str, int, int, bytes]:
    """Write the blob meta, zstd-compressed unless that does not make it smaller (spooled, never
    whole in memory); returns (compressor, stored size, uncompressed size, sha256 of the latter)."""
    raw_size = len(chunks.ci) + chunks.zran_size
    digest = hashlib.sha256()
    with tempfile.TemporaryFile(dir=chunks.workdir) as packed:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        with compressor.stream_writer(packed, size=raw_size, closefd=False) as stream:
            for piece in chunks.meta_pieces():
                digest.update(piece)
                stream.write(piece)
        packed_size = packed.tell()
        if packed_size < raw_size:
            packed.seek(0)
            while piece := packed.read(COPY_SIZE):
                writer.write(piece)
            return "zstd", packed_size, raw_size, digest.digest()
    for piece in chunks.meta_pieces():
        writer.write(piece)
    return "none", raw_size, raw_size, digest.digest()


def _write_blob(
    out: IO[bytes],
    chunks: _ZranChunks,
    root: Inode,
    refs: BlobRefs,
    gzip_size: int,
    prefetch_patterns: tuple[str, ...],
) -> ZranBlobResult:
    """blob.meta, blob.digest, image.boot and the TOC, each followed by its tar header (§4)."""
    blob_id, chunk_size = chunks.blob_id, chunks.chunk_size
    writer = _HashingWriter(out)
    toc: list[bytes] = []
    blobs: list[BlobInfo] = []
    count = len(chunks.distinct)
    if count:
        ci_compressor, stored_size, meta_size, meta_digest = _write_meta(writer, chunks)
        header = pack_blob_meta_header(
            ZRAN_BLOB_FEATURES,
            ci_compressor,
            count,
            0,
            stored_size,
            meta_size,
            len(chunks.contexts),
            chunks.zran_size,
        )
        writer.write(header)
        writer.write(gnu_tar_header("blob.meta", stored_size + BLOB_META_HEADER_SIZE))
        toc.append(pack_toc_entry("blob.meta", ci_compressor, meta_digest, 0, stored_size, meta_size))
        toc.append(
            pack_toc_entry(
                "blob.meta.header",
                "none",
                hashlib.sha256(header).digest(),
                stored_size,
                BLOB_META_HEADER_SIZE,
                BLOB_META_HEADER_SIZE,
            )
        )
        digests = b"".join(chunks.index.pieces())
        digests_offset = writer.position
        writer.write(digests)
        writer.write(gnu_tar_header("blob.digest", len(digests)))
        toc.append(
            pack_toc_entry(
                "blob.digest",
                "none",
                hashlib.sha256(digests).digest(),
                digests_offset,
                len(digests),
                len(digests),
            )
        )
        blobs.append(
            BlobInfo(
                blob_id=blob_id,
                chunk_size=chunk_size,
                chunk_count=count,
                compressor="gzip",
                digester=DIGESTER,
                features=ZRAN_BLOB_FEATURES,
                compressed_size=gzip_size,
                uncompressed_size=chunks.uncompressed_end,
                ci_compressor=ci_compressor,
                ci_offset=0,
                ci_compressed_size=stored_size,
                ci_uncompressed_size=meta_size,
            )
        )
    bootstrap = Bootstrap(
        root,
        BootstrapSettings(
            chunk_size=chunk_size,
            compressor="gzip",
            digester=DIGESTER,
            blobs=blobs,
            prefetch_patterns=prefetch_patterns,
        ),
        refs,
    )
    boot_offset = writer.position
    boot_compressor, boot_stored, boot_digest = store_bootstrap(bootstrap, writer, chunks.workdir)
    writer.write(gnu_tar_header("image.boot", boot_stored))
    toc.append(
        pack_toc_entry("image.boot", boot_compressor, boot_digest, boot_offset, boot_stored, bootstrap.size)
    )
    toc_data = b"".join(toc)
    writer.write(toc_data)
    writer.write(gnu_tar_header("rafs.blob.toc", TOC_ENTRY_SIZE * len(toc)))
    return ZranBlobResult(
        digest="sha256:" + writer.sha256.hexdigest(),
        size=writer.position,
        chunk_count=count,
        context_count=len(chunks.contexts),
        gzip_size=gzip_size,
        toc_digest=hashlib.sha256(toc_data).digest(),
        toc_size=len(toc_data) + TAR_BLOCK,
    )
