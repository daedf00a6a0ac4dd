"""Copying images between image stores with digests unchanged.

Blobs are streamed from source to destination (never held whole in memory), skipped when the
destination has them and mounted when both stores are repositories on the same registry.
Manifests and indexes are pushed as the exact source bytes; only a `--platform` selection of
several (but not all) platforms of an index produces a new, filtered index.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from acceld.errors import AcceldError
from acceld.oci.models import Descriptor, RawManifest
from acceld.oci.platform import Platform
from acceld.progress import NullProgress, ProgressReporter
from acceld.registry.repository import RegistryRepository
from acceld.registry.store import ImageStore, VerifiedStream

BLOB_ATTEMPTS = 3


class PlatformNotFound(AcceldError):
    """No manifest of an index matches the requested platform."""


@dataclass
class CopyResult:
    digest: str
    media_type: str
    outcomes: dict[str, str] = field(default_factory=dict)  # blob digest → exists/mounted/uploaded


def select_platforms(index_raw: RawManifest, wanted: Sequence[Platform], location: str) -> list[Descriptor]:
    """The index entries matching each wanted platform (first match per platform, in index order)."""
    entries = index_raw.index().manifests
    chosen: list[Descriptor] = []
    for platform in wanted:
        match = next((e for e in entries if e.platform is not None and platform.matches(e.platform)), None)
        if match is None:
            raise PlatformNotFound(f"{location} has no manifest for platform {platform}")
        if match not in chosen:
            chosen.append(match)
    return [e for e in entries if e in chosen]


class _Copier:
    def __init__(
        self, src: ImageStore, dst: ImageStore, progress: ProgressReporter, concurrency: int
    ) -> None:
        self.src = src
        self.dst = dst
        self.progress = progress
        self.limit = asyncio.Semaphore(concurrency)
        self.blobs: dict[str, asyncio.Task[str]] = {}
        same_registry = (
            isinstance(src, RegistryRepository)
            and isinstance(dst, RegistryRepository)
            and src.client is dst.client
        )
        self.mount_from = src.name if same_registry and isinstance(src, RegistryRepository) else None

    async def manifest_tree(self, raw: RawManifest, tag: str | None = None) -> None:
        """Copy everything `raw` references (children first), then `raw` itself under `tag`."""
        if raw.is_index:
            children = [await self.src.get_manifest(d.digest) for d in raw.index().manifests]
            await asyncio.gather(*(self.manifest_tree(child) for child in children))
        elif raw.is_manifest:
            manifest = raw.manifest()
            await asyncio.gather(*(self.blob(d) for d in [manifest.config, *manifest.layers]))
        else:
            raise AcceldError(f"cannot copy {raw.digest}: unsupported media type {raw.media_type}")
        await self.dst.put_manifest(raw, tag)

    async def cancel(self) -> None:
        for task in self.blobs.values():
            task.cancel()
        await asyncio.gather(*self.blobs.values(), return_exceptions=True)

    def blob(self, desc: Descriptor) -> asyncio.Task[str]:
        if desc.digest not in self.blobs:
            self.blobs[desc.digest] = asyncio.ensure_future(self._copy_blob(desc))
        return self.blobs[desc.digest]

    async def _copy_blob(self, desc: Descriptor) -> str:
        async with self.limit:
            key = desc.digest
            self.progress.start(key, f"blob {desc.digest[7:19]}", desc.size)
            attempt = 0
            while True:
                try:
                    outcome = await self.dst.put_blob(
                        desc, VerifiedStream(self._counted(desc), desc.digest), mount_from=self.mount_from
                    )
                    break
                except AcceldError as exc:
                    attempt += 1
                    if not exc.transient or attempt >= BLOB_ATTEMPTS:
                        raise
                    self.progress.reset(key)
                    self.progress.log(f"blob {desc.digest[7:19]}: retrying after: {exc}")
            self.progress.finish(key, outcome)
            return outcome

    async def _counted(self, desc: Descriptor) -> AsyncIterator[bytes]:
        async for chunk in self.src.blob_chunks(desc):
            self.progress.advance(desc.digest, len(chunk))
            yield chunk


async def copy_image(
    src: ImageStore,
    src_ref: str,
    dst: ImageStore,
    dst_tag: str | None,
    *,
    platforms: Sequence[Platform] = (),
    all_platforms: bool = False,
    progress: ProgressReporter | None = None,
    concurrency: int = 4,
) -> CopyResult:
    """Copy `src_ref` (tag or digest) of `src` to `dst`, tagged `dst_tag` (None: by digest only).

    A manifest is copied as is. For an index: `all_platforms` copies it whole (same digest);
    one platform copies that platform's manifest alone; several platforms copy a filtered index;
    neither copies the manifest of the host platform.
    """
    progress = progress or NullProgress()
    copier = _Copier(src, dst, progress, concurrency)
    raw = await src.get_manifest(src_ref)
    if raw.is_index and not all_platforms:
        wanted = list(platforms) or [Platform.host()]
        chosen = select_platforms(raw, wanted, f"{src.location}:{src_ref}")
        if len(chosen) == 1:
            raw = await src.get_manifest(chosen[0].digest)
        elif len(chosen) < len(raw.index().manifests):
            index = raw.index()
            index.manifests = chosen
            raw = RawManifest.from_bytes(index.to_json(), raw.media_type)
    progress.log(f"copying {raw.digest} ({raw.media_type}) from {src.location} to {dst.location}")
    try:
        await copier.manifest_tree(raw, dst_tag)
    except BaseException:
        await copier.cancel()
        raise
    outcomes = {digest: task.result() for digest, task in copier.blobs.items()}
    return CopyResult(raw.digest, raw.media_type, outcomes)
