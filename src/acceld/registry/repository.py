"""One repository on a registry: manifests, blobs, uploads, tags and referrers.

`RegistryRepository` implements the `ImageStore` protocol (see `acceld.registry.store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx

from acceld.oci import mediatypes as mt
from acceld.oci.digest import Digester, DigestMismatch, is_digest, verify_bytes
from acceld.oci.models import Descriptor, Index, InvalidManifest, RawManifest
from acceld.registry.auth import repository_scope
from acceld.registry.background import BackgroundWorker, Coalescer
from acceld.registry.client import BlobBody, RegistryClient
from acceld.registry.errors import NotFound, RegistryError
from acceld.registry.limits import TransferStalled, paced
from acceld.registry.origin import describe, origin_of
from acceld.registry.store import (
    BlobSource,
    PutResult,
    VerifiedFile,
    exact_size,
    iter_source,
    rechunk,
    source_size,
)

MAX_MANIFEST_SIZE = 4 << 20
MONOLITHIC_LIMIT = 8 << 20  # blobs up to this size go in the PUT that completes the upload
_READ_SIZE = 4 << 20
_FALLBACK_WRITES = 8  # writes of one referrers fallback index before giving up


def _range_starts_at(response: httpx.Response, offset: int) -> bool:
    """Whether a 206 answer's `Content-Range: bytes START-END/TOTAL` starts at `offset`."""
    value = response.headers.get("content-range", "")
    start = value.removeprefix("bytes ").split("-", 1)[0]
    return start.isdigit() and int(start) == offset


def fallback_tag(digest: str) -> str:
    """The referrers tag schema: `<alg>-<hex>` of the subject digest."""
    algorithm, hex_part = digest.split(":", 1)
    return f"{algorithm}-{hex_part}"[:128]


def referrer_descriptor(raw: RawManifest) -> Descriptor:
    """How a referrer appears in a referrers index: artifactType falls back to config.mediaType."""
    parsed = raw.parse()
    artifact_type = parsed.artifact_type
    if artifact_type is None and raw.is_manifest:
        artifact_type = raw.manifest().config.media_type
    return raw.descriptor(artifactType=artifact_type, annotations=parsed.annotations)


class RegistryRepository:
    def __init__(self, client: RegistryClient, name: str) -> None:
        self.client = client
        self.name = name
        self.location = f"{client.host}/{name}"
        self.monolithic_limit = MONOLITHIC_LIMIT
        # None: one streamed PATCH (fastest on distribution); a size: PATCH requests of that size.
        self.upload_chunk_size = client.settings.upload_chunk_size
        self._pull = [repository_scope(name, "pull")]
        self._push = [repository_scope(name, "pull", "push")]

    def __repr__(self) -> str:
        return f"RegistryRepository({self.location!r})"

    def _path(self, kind: str, ref: str = "") -> str:
        return f"/v2/{self.name}/{kind}/{ref}" if ref else f"/v2/{self.name}/{kind}/"

    # -- manifests --------------------------------------------------------------------------

    async def get_manifest(self, ref: str) -> RawManifest:
        response = await self.client.request(
            "GET",
            self._path("manifests", ref),
            scopes=self._pull,
            what=f"manifest {ref}",
            repository=self.location,
            headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)},
        )
        data = response.content
        if len(data) > MAX_MANIFEST_SIZE:
            raise InvalidManifest(
                f"manifest {ref} in {self.location} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        raw = RawManifest.from_bytes(data, content_type or None)
        if is_digest(ref):
            verify_bytes(data, ref, what=f"manifest in {self.location}")
        return raw

    async def resolve(self, ref: str) -> Descriptor:
        """The descriptor of a tag or digest, from a HEAD request (GET if the registry omits the digest)."""
        response = await self.client.request(
            "HEAD",
            self._path("manifests", ref),
            scopes=self._pull,
            what=f"manifest {ref}",
            repository=self.location,
            headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)},
        )
        digest = response.headers.get("docker-content-digest")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        length = response.headers.get("content-length")
        if (
            digest
            and is_digest(digest)
            and length
            and (mt.is_manifest(media_type) or mt.is_index(media_type))
        ):
            return Descriptor(mediaType=media_type, digest=digest, size=int(length))
        return (await self.get_manifest(ref)).descriptor()

    async def put_manifest(self, manifest: RawManifest, tag: str | None = None) -> None:
        """PUT the exact bytes under `tag` (or by digest). A `subject` is indexed for referrers."""
        ref = tag or manifest.digest
        response = await self.client.request(
            "PUT",
            self._path("manifests", ref),
            scopes=self._push,
            what=f"push of manifest {ref}",
            repository=self.location,
            expect=(200, 201),
            content=manifest.data,
            headers={"Content-Type": manifest.media_type},
        )
        stored = response.headers.get("docker-content-digest")
        if stored and stored != manifest.digest:
            raise DigestMismatch(
                f"{self.location} stored manifest {ref} as {stored}, expected {manifest.digest}"
            )
        subject = manifest.subject()
        if subject is not None and not response.headers.get("oci-subject"):
            await self._add_to_fallback_index(subject.digest, manifest)

    async def delete_manifest(self, digest: str) -> None:
        await self.client.request(
            "DELETE",
            self._path("manifests", digest),
            scopes=[repository_scope(self.name, "delete")],
            what=f"delete of manifest {digest}",
            repository=self.location,
            expect=(200, 202),
        )

    async def list_tags(self, limit: int | None = None) -> list[str]:
        return await self.client.list_pages(
            self._path("tags", "list"),
            "tags",
            scopes=self._pull,
            what="tag list",
            repository=self.location,
            limit=limit,
        )

    # -- referrers --------------------------------------------------------------------------

    async def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Referrers of `digest`: the referrers API, else the fallback tag `<alg>-<hex>`."""
        params = {"artifactType": artifact_type} if artifact_type else None
        response = await self.client.request(
            "GET",
            self._path("referrers", digest),
            scopes=self._pull,
            what=f"referrers of {digest}",
            repository=self.location,
            expect=(200, 404),
            params=params,
            headers={"Accept": mt.OCI_INDEX},
        )
        if response.status_code == 200:
            manifests = RawManifest.from_bytes(response.content, mt.OCI_INDEX).index().manifests
            filtered = "artifacttype" in response.headers.get("oci-filters-applied", "").lower()
        else:
            try:
                manifests = (await self.get_manifest(fallback_tag(digest))).index().manifests
            except NotFound:
                return []
            filtered = False
        if artifact_type and not filtered:
            manifests = [m for m in manifests if m.artifact_type == artifact_type]
        return manifests

    async def _add_to_fallback_index(self, subject: str, referrer: RawManifest) -> None:
        """Add `referrer` to the fallback index of `subject`, then read it back: a concurrent writer
        that read the index before this write may have replaced it, so the entry is added again
        until it stays (callers serialise their own writers per subject; this covers the others)."""
        tag = fallback_tag(subject)
        for attempt in range(_FALLBACK_WRITES + 1):
            try:
                index = (await self.get_manifest(tag)).index()
            except NotFound:
                index = Index(mediaType=mt.OCI_INDEX, manifests=[])
            if any(m.digest == referrer.digest for m in index.manifests):
                return
            if attempt == _FALLBACK_WRITES:
                break
            index.manifests.append(referrer_descriptor(referrer))
            await self.put_manifest(RawManifest.from_bytes(index.to_json(), mt.OCI_INDEX), tag)
            await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))  # let stale writers land
        raise RegistryError(
            f"{self.location}: the referrers index {tag} kept losing {referrer.digest} to concurrent writers"
        )

    # -- blobs ------------------------------------------------------------------------------

    async def has_blob(self, digest: str) -> bool:
        return await self._blob_exists(digest, self._pull)

    async def _blob_exists(self, digest: str, scopes: list[str]) -> bool:
        response = await self.client.request(
            "HEAD",
            self._path("blobs", digest),
            scopes=scopes,
            what=f"blob {digest}",
            repository=self.location,
            expect=(200, 404),
        )
        return response.status_code == 200

    async def blob_chunks(self, desc: Descriptor) -> AsyncIterator[bytes]:
        """Stream a blob in pieces of about 1 MiB; resume with Range after a broken connection;
        verify digest and size (hashing in a worker thread) after the last piece, so consume the
        iterator to its end."""
        digester = Digester.for_digest(desc.digest)
        hasher = BackgroundWorker()
        pieces = Coalescer()
        received = 0
        what = f"blob {desc.digest}"
        attempt = 0
        try:
            while True:
                headers = {"Accept-Encoding": "identity"}
                if received:
                    headers["Range"] = f"bytes={received}-"
                response = await self.client.request(
                    "GET",
                    self._path("blobs", desc.digest),
                    scopes=self._pull,
                    what=what,
                    repository=self.location,
                    expect=(200, 206),
                    headers=headers,
                    stream=True,
                )
                skip = received if response.status_code == 200 else 0  # the registry ignored Range
                if response.status_code == 206 and not _range_starts_at(response, received):
                    await response.aclose()
                    raise RegistryError(f"{what} in {self.location}: resumed download at the wrong offset")
                settings = self.client.settings
                body = paced(
                    response.aiter_raw(),
                    settings.blob_stall_timeout,
                    int(settings.blob_min_speed * settings.blob_stall_timeout),
                    f"{what} in {self.location}",
                )
                try:
                    async for chunk in body:
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        received += len(chunk)
                        if received > desc.size:
                            raise DigestMismatch(f"{what} in {self.location}: more than {desc.size} bytes")
                        piece = pieces.add(chunk)
                        if piece is not None:
                            await hasher.submit(partial(digester.update, piece))
                            yield piece
                    break
                except (httpx.TransportError, TransferStalled) as exc:
                    attempt += 1
                    if attempt >= self.client.retry.attempts:
                        if isinstance(exc, TransferStalled):
                            raise
                        raise self.client.transport_error(exc, what, self.location) from None
                    await asyncio.sleep(self.client.retry.backoff(attempt - 1))
                finally:
                    await body.aclose()
                    await response.aclose()
            piece = pieces.flush()
            if piece is not None:
                await hasher.submit(partial(digester.update, piece))
                yield piece
            await hasher.wait()
        finally:
            await hasher.drain()
        digester.verify(desc.digest, desc.size, what=f"{what} in {self.location}")

    async def fetch_blob(self, desc: Descriptor, path: Path) -> None:
        with path.open("wb") as out:
            async for chunk in self.blob_chunks(desc):
                out.write(chunk)

    async def get_blob_bytes(self, desc: Descriptor, limit: int = MAX_MANIFEST_SIZE) -> bytes:
        if desc.size > limit:
            raise RegistryError(f"blob {desc.digest} in {self.location} is larger than {limit} bytes")
        return b"".join([chunk async for chunk in self.blob_chunks(desc)])

    async def put_blob(
        self, desc: Descriptor, source: BlobSource, mount_from: str | None = None
    ) -> PutResult:
        """Make the blob exist here: skip if present, mount from `mount_from` (a repository on the
        same registry) if possible, else upload `source`. Uploads from bytes or a file are retried
        as a whole on transient errors; an async-iterator source is consumed once."""
        if await self._blob_exists(desc.digest, self._push):
            return "exists"
        location: str | None = None
        if mount_from and mount_from != self.name:
            response = await self.client.request(
                "POST",
                self._path("blobs", "uploads/"),
                scopes=[*self._push, repository_scope(mount_from, "pull")],
                what=f"mount of blob {desc.digest}",
                repository=self.location,
                expect=(201, 202),
                params={"mount": desc.digest, "from": mount_from},
            )
            if response.status_code == 201:
                return "mounted"
            location = self._location(response)  # the registry opened an ordinary upload instead
        replayable = isinstance(source, bytes | Path | VerifiedFile)
        attempt = 0
        while True:
            try:
                await self._upload(desc, source, location)
                return "uploaded"
            except RegistryError as exc:
                attempt += 1
                if not (replayable and exc.transient and attempt < self.client.retry.attempts):
                    raise
                location = None
                await asyncio.sleep(self.client.retry.backoff(attempt - 1))

    async def _upload(self, desc: Descriptor, source: BlobSource, location: str | None) -> None:
        """POST (unless a mount attempt opened the upload), then either PUT a small blob in one
        request, or PATCH the body — one streamed PATCH, or `upload_chunk_size` pieces each sent
        to the newest Location — and PUT the digest."""
        what = f"upload of blob {desc.digest}"
        try:
            if location is None:
                response = await self.client.request(
                    "POST",
                    self._path("blobs", "uploads/"),
                    scopes=self._push,
                    what=what,
                    repository=self.location,
                    expect=(202,),
                )
                location = self._location(response)
            size = source_size(source)
            if size is not None and size != desc.size:
                raise DigestMismatch(f"{what}: source has {size} bytes, descriptor says {desc.size}")
            if desc.size <= self.monolithic_limit:
                body = b"".join([c async for c in iter_source(source, _READ_SIZE)])
                await self._finish_upload(location, desc, body)
                return
            chunks = exact_size(iter_source(source, _READ_SIZE), desc.size, what)
            if self.upload_chunk_size is None:
                location = await self._patch(location, chunks, desc.size, 0, what)
            else:
                offset = 0
                async for piece in rechunk(chunks, self.upload_chunk_size):
                    location = await self._patch(location, piece, len(piece), offset, what)
                    offset += len(piece)
            await self._finish_upload(location, desc, b"")
        except BaseException:
            if location is not None:
                await self._cancel_upload(location)
            raise

    async def _patch(self, location: str, body: BlobBody, length: int, offset: int, what: str) -> str:
        response = await self.client.request(
            "PATCH",
            location,
            scopes=self._push,
            what=what,
            repository=self.location,
            expect=(202, 204),
            content=body,
            idempotent=False,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
            },
        )
        return self._location(response, location)

    async def _finish_upload(self, location: str, desc: Descriptor, body: bytes) -> None:
        url = httpx.URL(self.client.url(location)).copy_merge_params({"digest": desc.digest})
        headers = {"Content-Type": "application/octet-stream"}
        response = await self.client.request(
            "PUT",
            str(url),
            scopes=self._push,
            what=f"upload of blob {desc.digest}",
            repository=self.location,
            expect=(201, 204),
            content=body,
            headers=headers,
            idempotent=False,
        )
        stored = response.headers.get("docker-content-digest")
        if stored and stored != desc.digest:
            raise DigestMismatch(f"{self.location} stored blob as {stored}, expected {desc.digest}")

    async def _cancel_upload(self, location: str) -> None:
        with contextlib.suppress(RegistryError):  # best effort: registries purge abandoned uploads
            await self.client.request(
                "DELETE",
                location,
                scopes=self._push,
                what="cancel upload",
                repository=self.location,
                expect=(200, 202, 204, 404),
            )

    def _location(self, response: httpx.Response, previous: str | None = None) -> str:
        """The upload URL a response names. One on another origin is used without credentials
        (`RegistryClient.request` sends them only to the registry) and only over https (or
        http on the host of a plain-http registry): the blob must not travel in cleartext."""
        location = response.headers.get("location")
        if not location:
            if previous:
                return previous
            raise RegistryError(f"{self.location} answered an upload request without a Location header")
        try:
            url = response.url.join(location)
            acceptable = self.client.origins.may_receive_data(url)
        except httpx.InvalidURL:
            raise RegistryError(
                f"{self.location} sent an invalid upload Location {location[:200]!r}"
            ) from None
        if not acceptable:
            raise RegistryError(
                f"{self.location} sent an upload Location on {describe(origin_of(url))}: refused, "
                "blobs go only to the registry's origin or over https"
            )
        return str(url)
