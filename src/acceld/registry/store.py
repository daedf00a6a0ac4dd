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
* `list_tags()`; `location` is a human-readable name for messages.

`acceld.registry.stores.Stores` opens a store for a parsed `Reference` or `LayoutRef`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Literal, Protocol

from acceld.oci.models import Descriptor, RawManifest

BlobSource = bytes | Path | AsyncIterable[bytes]
PutResult = Literal["exists", "mounted", "uploaded"]


class ImageStore(Protocol):
    location: str

    async def get_manifest(self, ref: str) -> RawManifest: ...

    async def resolve(self, ref: str) -> Descriptor: ...

    async def put_manifest(self, manifest: RawManifest, tag: str | None = None) -> None: ...

    async def list_tags(self) -> list[str]: ...

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
    if isinstance(source, Path):
        return source.stat().st_size
    return None


async def iter_source(source: BlobSource, chunk_size: int) -> AsyncIterator[bytes]:
    """The source as chunks of exactly `chunk_size` bytes (the last one may be shorter)."""
    if isinstance(source, bytes):
        for start in range(0, len(source), chunk_size):
            yield source[start : start + chunk_size]
        return
    if isinstance(source, Path):
        with source.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        return
    buffer = bytearray()
    async for piece in source:
        buffer += piece
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    if buffer:
        yield bytes(buffer)
