"""OCI image layouts (`oci:PATH[:TAG]`) as an `ImageStore`.

A layout is a directory with `oci-layout`, `index.json` and `blobs/<alg>/<hex>`. Tags are the
`org.opencontainers.image.ref.name` annotations of `index.json` entries (as skopeo and umoci
write them). Manifests pushed with a `subject` but without a tag are listed in `index.json`
too, so `referrers()` finds them. Blobs are written to a temporary file, verified, then
renamed into place; `index.json` is replaced atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

from acceld.errors import AcceldError
from acceld.oci import mediatypes as mt
from acceld.oci.digest import (
    Digester,
    DigestMismatch,
    InvalidDigest,
    is_digest,
    validate_digest,
    verify_bytes,
)
from acceld.oci.models import Descriptor, Index, InvalidManifest, RawManifest
from acceld.registry.background import BackgroundWorker, read_ahead
from acceld.registry.errors import NotFound
from acceld.registry.store import BlobSource, PutResult, VerifiedFile, VerifiedStream, iter_source

REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}
_READ_CHUNK = 4 << 20
_MAX_MANIFEST_SIZE = 4 << 20


class LayoutError(AcceldError):
    """A missing or malformed OCI image layout."""


@contextlib.contextmanager
def _io_errors(location: str, what: str) -> Iterator[None]:
    """Turn file-system failures (permissions, full disk, …) into one-line LayoutErrors."""
    try:
        yield
    except OSError as exc:
        raise LayoutError(f"{location}: cannot {what}: {exc.strerror or exc}") from None


class OCILayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = f"oci:{root}"
        self._index_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> OCILayout:
        """Open an existing layout; with `create`, initialise an empty one if `root` has none."""
        layout = cls(root)
        marker = root / "oci-layout"
        if marker.is_file():
            try:
                version = json.loads(marker.read_text()).get("imageLayoutVersion")
            except (OSError, ValueError, AttributeError):
                version = None
            if not isinstance(version, str) or not version.startswith("1."):
                raise LayoutError(f"{layout.location}: unsupported or unreadable oci-layout file")
            return layout
        if not create:
            raise LayoutError(f"{layout.location} is not an OCI image layout (no oci-layout file)")
        try:
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not (root / "index.json").exists():
                layout._write_index(Index(mediaType=mt.OCI_INDEX, manifests=[]))
            marker.write_text(json.dumps(_LAYOUT_FILE))
        except OSError as exc:
            raise LayoutError(f"cannot create OCI layout {root}: {exc.strerror}") from None
        return layout

    # -- index.json -------------------------------------------------------------------------

    def read_index(self) -> Index:
        try:
            data = (self.root / "index.json").read_bytes()
        except OSError as exc:
            raise LayoutError(f"{self.location}: cannot read index.json: {exc.strerror}") from None
        try:
            return RawManifest.from_bytes(data, mt.OCI_INDEX).index()
        except InvalidManifest as exc:
            raise LayoutError(f"{self.location}: bad index.json: {exc}") from None

    def _write_index(self, index: Index) -> None:
        with _io_errors(self.location, "write index.json"):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index-", suffix=".json")
            with os.fdopen(fd, "wb") as f:
                f.write(index.to_json())
            os.replace(tmp, self.root / "index.json")

    def tagged(self, tag: str) -> Descriptor | None:
        for desc in self.read_index().manifests:
            if (desc.annotations or {}).get(REF_NAME) == tag:
                return desc
        return None

    def default_ref(self) -> str:
        """The digest of the only image in the layout (for `oci:PATH` without a tag)."""
        manifests = self.read_index().manifests
        if len(manifests) != 1:
            raise LayoutError(f"{self.location} holds {len(manifests)} images; name one with oci:PATH:TAG")
        return manifests[0].digest

    # -- manifests --------------------------------------------------------------------------

    async def get_manifest(self, ref: str) -> RawManifest:
        desc = await self.resolve(ref)
        if desc.size > _MAX_MANIFEST_SIZE:
            raise InvalidManifest(
                f"manifest {ref} in {self.location} is larger than {_MAX_MANIFEST_SIZE} bytes"
            )
        data = self._read_blob(desc.digest, f"manifest {ref}")
        verify_bytes(data, desc.digest, what=f"manifest in {self.location}")
        return RawManifest.from_bytes(data, desc.media_type)

    async def resolve(self, ref: str) -> Descriptor:
        if is_digest(ref):
            for desc in self.read_index().manifests:
                if desc.digest == ref:
                    return desc
            data = self._read_blob(ref, f"manifest {ref}")
            return RawManifest.from_bytes(data).descriptor()
        tagged = self.tagged(ref)
        if tagged is None:
            raise NotFound(
                f"tag {ref} not found in {self.location}", code="MANIFEST_UNKNOWN", repository=self.location
            )
        return tagged

    async def put_manifest(self, manifest: RawManifest, tag: str | None = None) -> None:
        await self.put_blob(manifest.descriptor(), manifest.data)
        subject = manifest.subject()
        if tag is None and subject is None:
            return
        async with self._index_lock:
            index = self.read_index()
            if tag is not None:
                index.manifests = [m for m in index.manifests if (m.annotations or {}).get(REF_NAME) != tag]
                index.manifests.append(manifest.descriptor(annotations={REF_NAME: tag}))
            elif all(m.digest != manifest.digest for m in index.manifests):
                index.manifests.append(manifest.descriptor())
            self._write_index(index)

    async def list_tags(self, limit: int | None = None) -> list[str]:
        names = [(m.annotations or {}).get(REF_NAME) for m in self.read_index().manifests]
        return [n for n in names if n][:limit]

    async def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        from acceld.registry.repository import referrer_descriptor

        found: list[Descriptor] = []
        for desc in self.read_index().manifests:
            if not (mt.is_manifest(desc.media_type) or mt.is_index(desc.media_type)):
                continue
            raw = RawManifest.from_bytes(self._read_blob(desc.digest, "manifest"), desc.media_type)
            subject = raw.subject()
            if subject is None or subject.digest != digest:
                continue
            referrer = referrer_descriptor(raw)
            if artifact_type is None or referrer.artifact_type == artifact_type:
                found.append(referrer)
        return found

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        try:
            algorithm, hex_part = validate_digest(digest).split(":", 1)
        except InvalidDigest as exc:
            raise LayoutError(str(exc)) from None
        return self.root / "blobs" / algorithm / hex_part

    def _read_blob(self, digest: str, what: str) -> bytes:
        path = self.blob_path(digest)
        if not path.is_file():
            raise NotFound(
                f"{what} not found in {self.location}", code="BLOB_UNKNOWN", repository=self.location
            )
        with _io_errors(self.location, f"read {what}"):
            return path.read_bytes()

    async def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    async def blob_chunks(self, desc: Descriptor) -> AsyncIterator[bytes]:
        digester = Digester.for_digest(desc.digest)
        hasher = BackgroundWorker()
        path = self.blob_path(desc.digest)
        if not path.is_file():
            raise NotFound(
                f"blob {desc.digest} not found in {self.location}",
                code="BLOB_UNKNOWN",
                repository=self.location,
            )
        with _io_errors(self.location, f"read blob {desc.digest}"):
            f = path.open("rb")
        try:
            async with contextlib.aclosing(read_ahead(f, _READ_CHUNK)) as chunks:
                async for chunk in chunks:
                    await hasher.submit(partial(digester.update, chunk))
                    yield chunk
            await hasher.wait()
        finally:
            await hasher.drain()
        digester.verify(desc.digest, desc.size, what=f"blob in {self.location}")

    async def fetch_blob(self, desc: Descriptor, path: Path) -> None:
        with path.open("wb") as out:
            async for chunk in self.blob_chunks(desc):
                out.write(chunk)

    async def get_blob_bytes(self, desc: Descriptor, limit: int = _MAX_MANIFEST_SIZE) -> bytes:
        if desc.size > limit:
            raise LayoutError(f"blob {desc.digest} in {self.location} is larger than {limit} bytes")
        data = self._read_blob(desc.digest, f"blob {desc.digest}")
        verify_bytes(data, desc.digest, desc.size, what=f"blob in {self.location}")
        return data

    async def put_blob(
        self, desc: Descriptor, source: BlobSource, mount_from: str | None = None
    ) -> PutResult:
        target = self.blob_path(desc.digest)
        if target.is_file():
            return "exists"
        with _io_errors(self.location, f"write blob {desc.digest}"):
            if not await asyncio.to_thread(_link_verified, target, desc, source):
                await self._write_blob(target, desc, source)
        return "uploaded"

    async def _write_blob(self, target: Path, desc: Descriptor, source: BlobSource) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        verified = isinstance(source, VerifiedStream) and source.digest == desc.digest
        digester = Digester.for_digest(desc.digest)
        hasher, writer = BackgroundWorker(), BackgroundWorker()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    async for chunk in iter_source(source, _READ_CHUNK):
                        if not verified:
                            await hasher.submit(partial(digester.update, chunk))
                        await writer.submit(partial(out.write, chunk))
                    await writer.wait()
                    await hasher.wait()
                finally:
                    await writer.drain()
                    await hasher.drain()
            if not verified:
                digester.verify(desc.digest, desc.size, what=f"blob written to {self.location}")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _link_verified(target: Path, desc: Descriptor, source: BlobSource) -> bool:
    """Link a verified file of the same filesystem into place; False when it must be copied."""
    if not isinstance(source, VerifiedFile) or source.digest != desc.digest:
        return False
    if source.path.stat().st_size != desc.size:
        raise DigestMismatch(f"{source.path} holds {source.path.stat().st_size} bytes, {desc.size} expected")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-link-{uuid.uuid4().hex}"
    try:
        os.link(source.path, tmp)
    except OSError:  # another filesystem, or links not allowed: copy
        return False
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
