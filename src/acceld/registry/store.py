"""The image-store protocol shared by registry repositories and OCI layouts.

Copy and conversion code talks to an `ImageStore` and never cares whether it is a repository
on a registry (`RegistryRepository`) or an OCI image layout directory (`OCILayout`):

* `get_manifest(ref)` → `RawManifest` (exact bytes, media type, digest) for a tag or digest;
  `resolve(ref)` → its `Descriptor`; `put_manifest(raw, tag=None)` stores the exact bytes
  (by digest only when `tag` is None); a manifest with a `subject` is made discoverable by
  `referrers(digest, artifact_type=None)`.
* `has_blob(digest)`; `blob_chunks(desc)` streams a blob and verifies digest and size after
  the last chunk; `fetch_blob(desc, path)` writes it to a file; `get_blob_bytes(desc)` for small
  blobs such as configs; `put_blob(desc, source, mount_from=None)` stores a blob from bytes, a
  file or an async iterator of chunks (`mount_from` names a repository on the same registry to
  mount from; layouts ignore it) and says whether it already existed, was mounted or uploaded.
  Wrap a stream that is verified at its source in `VerifiedStream` to avoid hashing it twice.
* `list_tags(limit=None)` (the first `limit` tags); `location` is a human-readable name for messages.

`acceld.registry.stores.Stores` opens a store for a parsed `Reference` or `LayoutRef`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from acceld.oci.digest import DigestMismatch
from acceld.oci.models import Descriptor, RawManifest
from acceld.registry.background import read_ahead


class VerifiedStream:
    """A blob's chunks from a producer that checks digest and size itself (raising instead of
    ending when they differ), such as `ImageStore.blob_chunks`: a consumer need not hash again."""

    def __init__(self, chunks: AsyncIterator[bytes], digest: str) -> None:
        self._chunks = chunks
        self.digest = digest

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks


@dataclass(frozen=True)
class VerifiedFile:
    """A local file whose digest its producer took while writing it (a conversion's output): a
    layout links it instead of copying and hashing it again."""

    path: Path
    digest: str


BlobSource = bytes | Path | VerifiedFile | AsyncIterable[bytes]
PutResult = Literal["exists", "mounted", "uploaded"]


class ImageStore(Protocol):
    location: str

    async def get_manifest(self, ref: str) -> RawManifest: ...

    async def resolve(self, ref: str) -> Descriptor: ...

    async def put_manifest(self, manifest: RawManifest, tag: str | None = None) -> None: ...

    async def list_tags(self, limit: int | None = None) -> list[str]: ...

    async def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]: ...

    async def has_blob(self, digest: str) -> bool: ...

    def blob_chunks(self, desc: Descriptor) -> AsyncIterator[bytes]: ...

    async def fetch_blob(self, desc: Descriptor, path: Path) -> None: ...

    async def get_blob_bytes(self, desc: Descriptor, limit: int = ...) -> bytes: ...

    async def put_blob(
        self, desc: Descriptor, source: BlobSource, mount_from: str | None = None
    ) -> PutResult: ...


def source_size(source: BlobSource) -> int | None:
    """The size of a bytes or file source; None for a stream."""
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, VerifiedFile):
        source = source.path
    if isinstance(source, Path):
        return source.stat().st_size
    return None


async def iter_source(source: BlobSource, read_size: int) -> AsyncIterator[bytes]:
    """The source as chunks: bytes and files in `read_size` pieces, streams as they come."""
    if isinstance(source, bytes):
        for start in range(0, len(source), read_size):
            yield source[start : start + read_size]
        return
    if isinstance(source, VerifiedFile):
        source = source.path
    if isinstance(source, Path):
        async with contextlib.aclosing(read_ahead(source.open("rb"), read_size)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    async for chunk in source:
        yield chunk


async def rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroup a stream into pieces of exactly `size` bytes (the last one may be shorter)."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            view = memoryview(buffer)
            whole = len(buffer) - len(buffer) % size
            for start in range(0, whole, size):
                yield bytes(view[start : start + size])
            view.release()
            del buffer[:whole]
    if buffer:
        yield bytes(buffer)


async def exact_size(chunks: AsyncIterable[bytes], size: int, what: str) -> AsyncIterator[bytes]:
    """Pass a stream through, failing with DigestMismatch unless it holds exactly `size` bytes."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > size:
            raise DigestMismatch(f"{what}: source is longer than {size} bytes")
        yield chunk
    if seen != size:
        raise DigestMismatch(f"{what}: source has {seen} bytes, descriptor says {size}")
