"""Pushing a converted image: blobs first, then configs, then manifests (children, then the index).

A blob already in the target repository is skipped; one known to exist in another repository
of the same registry (a pass-through layer of the source, or a cached layer pushed before) is
mounted from there; anything else is uploaded from its local file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from acceld.convert.cache import LayerCache
from acceld.convert.errors import first_error
from acceld.convert.layers import short
from acceld.convert.locks import machine_lock
from acceld.formats.driver import LayerBlob
from acceld.oci.models import Descriptor, RawManifest
from acceld.progress import ProgressReporter
from acceld.registry.layout import OCILayout
from acceld.registry.store import ImageStore, VerifiedFile

if TYPE_CHECKING:  # not imported at run time: converting between layouts never loads httpx
    from acceld.registry.repository import RegistryRepository

_PARALLEL_PUSHES = 4
_PUSH_OUTCOME = {"exists": "already there", "mounted": "mounted", "uploaded": "uploaded"}


@dataclass(frozen=True)
class PushPlan:
    """Everything one conversion pushes, in dependency order."""

    blobs: Sequence[LayerBlob]  # distinct layer blobs of every platform
    configs: Sequence[tuple[Descriptor, bytes]]
    children: Sequence[RawManifest]  # pushed by digest (index children)
    root: RawManifest  # pushed with the tag, or by digest when the target has no tag
    # blobs this conversion did not write itself (passed through, or from the layer cache): hashed
    # again when copied; the others' digests were taken while writing them
    unverified: frozenset[str] = frozenset()


class Pusher:
    def __init__(
        self,
        target: ImageStore,
        source: ImageStore,
        cache: LayerCache | None,
        progress: ProgressReporter,
        lock_dir: Path | None = None,
    ) -> None:
        self._target = target
        self._registry_target = _registry(target)
        self._lock_dir = lock_dir
        self._progress = progress
        self._registry_source = _registry(source)
        self._cache = cache
        self._slots = asyncio.Semaphore(_PARALLEL_PUSHES)

    async def push(self, plan: PushPlan, tag: str | None) -> None:
        configs = {desc.digest: (desc, data) for desc, data in plan.configs}
        try:
            async with asyncio.TaskGroup() as group:
                for blob in plan.blobs:
                    group.create_task(self._push_layer(blob, blob.digest not in plan.unverified))
            async with asyncio.TaskGroup() as group:
                for desc, data in configs.values():
                    group.create_task(self._push_bytes(desc, data))
        except BaseExceptionGroup as failures:
            raise first_error(failures) from None
        for child in plan.children:
            await self._put_manifest(child, None)
        await self._put_manifest(plan.root, tag)

    async def _put_manifest(self, manifest: RawManifest, tag: str | None) -> None:
        """A manifest with a `subject` updates the subject's referrers (a fallback index on registries
        without the API), so pushes naming one subject are serialised on this machine."""
        subject = manifest.subject()
        target = self._registry_target
        if subject is None or target is None:
            await self._target.put_manifest(manifest, tag)
            return
        async with machine_lock(self._lock_dir, f"{target.client.host}/{target.name}@{subject.digest}"):
            await target.put_manifest(manifest, tag)

    async def _push_bytes(self, desc: Descriptor, data: bytes) -> None:
        async with self._slots:
            await self._target.put_blob(desc, data)

    async def _push_layer(self, blob: LayerBlob, written_here: bool) -> None:
        desc = Descriptor(mediaType=blob.media_type, digest=blob.digest, size=blob.size)
        key = f"push {blob.digest}"
        async with self._slots:
            self._progress.start(key, f"push {short(blob.digest)}", blob.size)
            try:
                mount_from = self._mount_source(blob.digest)
                source = VerifiedFile(blob.path, blob.digest) if written_here else blob.path
                result = await self._target.put_blob(desc, source, mount_from=mount_from)
            except BaseException:
                self._progress.finish(key, "failed")
                raise
            if result == "uploaded":  # the upload streams the file by itself: count it as sent once done
                self._progress.advance(key, blob.size)
            self._progress.finish(key, _PUSH_OUTCOME[result])
        target = self._registry_target
        if self._cache is not None and target is not None:
            await asyncio.to_thread(self._cache.record_location, blob.digest, target.client.host, target.name)

    def _mount_source(self, digest: str) -> str | None:
        """A repository on the target's registry that is known to hold `digest`, if any."""
        target = self._registry_target
        if target is None:
            return None
        candidates: list[str] = []
        if self._cache is not None:
            candidates += self._cache.locations(digest, target.client.host)
        source = self._registry_source
        if source is not None and source.client.host == target.client.host:
            candidates.append(source.name)
        return next((name for name in candidates if name != target.name), None)


def _registry(store: ImageStore) -> RegistryRepository | None:
    """The store as a registry repository, None for an OCI layout (the other kind of store)."""
    return None if isinstance(store, OCILayout) else cast("RegistryRepository", store)
