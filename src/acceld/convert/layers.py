"""Turning every distinct source layer of a conversion into a converted blob on local disk.

Per layer, in this order: already in the target format → passes through unchanged (an artifact
driver instead skips layers it rules out by their descriptor, without fetching them); in the
layer cache → reused; otherwise fetched to a spool file (read in place from an OCI layout) and
converted in a worker process (artifact drivers: its artifact built, or skipped by content).
Layers shared by several platforms are handled once.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from acceld.convert.cache import CacheKey, LayerCache
from acceld.convert.errors import ConvertError, first_error
from acceld.convert.layer_job import LayerJob, artifact_layer_job, convert_layer_job
from acceld.convert.workers import ProcessRunner
from acceld.formats.driver import AnyDriver, ArtifactDriver, LayerBlob, SourceLayer
from acceld.formats.limits import DEFAULT_LIMITS, Limits, exceeded
from acceld.oci.digest import digest_hex
from acceld.oci.models import Descriptor
from acceld.progress import ProgressReporter
from acceld.registry.layout import OCILayout
from acceld.registry.store import ImageStore

_PARALLEL_FETCHES = 4


class Outcome(enum.Enum):
    CONVERTED = "converted"
    CACHED = "cached"
    PASSED = "passed through"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class ConvertedLayer:
    source: SourceLayer
    blob: LayerBlob | None  # None only when SKIPPED (artifact drivers)
    outcome: Outcome
    reason: str = ""  # why it was skipped


def short(digest: str) -> str:
    return digest_hex(digest)[:12]


class LayerConverter:
    """Converts layers of one conversion; spool files and converted blobs live under `workspace`."""

    def __init__(
        self,
        driver: AnyDriver,
        source: ImageStore,
        workspace: Path,
        cache: LayerCache | None,
        runner: ProcessRunner,
        progress: ProgressReporter,
        existing: Mapping[str, Descriptor] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """`existing`: artifacts already in the source repository (artifact drivers), by layer digest."""
        self._existing = existing or {}
        self._limits = limits
        self._decompressed = 0  # uncompressed bytes of the layers converted so far (max_image_bytes)
        self._driver = driver
        self._source = source
        self._workspace = workspace
        self._cache = cache
        self._runner = runner
        self._progress = progress
        self.warnings: list[str] = []  # one line each, for the user
        self._fetch_slots = asyncio.Semaphore(_PARALLEL_FETCHES)

    async def convert_all(self, layers: Iterable[SourceLayer]) -> dict[str, ConvertedLayer]:
        """Every distinct layer by source digest. The first failure cancels the rest."""
        distinct = {layer.digest: layer for layer in layers}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {digest: group.create_task(self._convert(lay)) for digest, lay in distinct.items()}
        except BaseExceptionGroup as failures:
            raise first_error(failures) from None
        return {digest: task.result() for digest, task in tasks.items()}

    async def _convert(self, layer: SourceLayer) -> ConvertedLayer:
        if isinstance(self._driver, ArtifactDriver):
            reason = self._driver.skip_reason(layer)
            if reason is not None:
                return self._skipped(layer, reason)
            if layer.digest in self._existing:
                return await self._reuse(layer, self._existing[layer.digest])
        elif self._driver.is_converted(layer):
            path = await self._local_copy(layer)
            blob = LayerBlob(
                path=path,
                media_type=layer.media_type,
                digest=layer.digest,
                size=layer.size,
                diff_id=layer.diff_id,
                annotations=dict(layer.annotations),
            )
            self._progress.log(f"layer {short(layer.digest)}: already {self._driver.name}, passed through")
            return ConvertedLayer(layer, blob, Outcome.PASSED)
        key = CacheKey(layer.digest, self._driver.name, self._driver.options_key())
        if self._cache is not None:
            cached = await asyncio.to_thread(self._cache.lookup, key)
            if cached is not None:
                self._progress.log(f"layer {short(layer.digest)}: cached as {short(cached.digest)}")
                return ConvertedLayer(layer, cached, Outcome.CACHED)
        source_path = await self._local_copy(layer)
        result = await self._convert_file(layer, source_path)
        if isinstance(result, str):
            return self._skipped(layer, result)
        if self._cache is not None:
            result = await asyncio.to_thread(self._cache.store, key, result)
        return ConvertedLayer(layer, result, Outcome.CONVERTED)

    async def _reuse(self, layer: SourceLayer, artifact: Descriptor) -> ConvertedLayer:
        """An artifact pushed before: fetched (it is small), the layer itself is not."""
        path = self._workspace / f"artifact-{digest_hex(artifact.digest)}"
        await self._source.fetch_blob(artifact, path)
        blob = LayerBlob(
            path=path,
            media_type=artifact.media_type,
            digest=artifact.digest,
            size=artifact.size,
            diff_id="",
            annotations=dict(artifact.annotations or {}),
        )
        reused = f"{self._driver.name} {short(artifact.digest)}"
        self._progress.log(f"layer {short(layer.digest)}: reusing the {reused} already pushed")
        return ConvertedLayer(layer, blob, Outcome.CACHED)

    def _skipped(self, layer: SourceLayer, reason: str) -> ConvertedLayer:
        self._progress.log(f"layer {short(layer.digest)}: skipped ({reason})")
        return ConvertedLayer(layer, None, Outcome.SKIPPED, reason)

    async def _convert_file(self, layer: SourceLayer, source_path: Path) -> LayerBlob | str:
        hex_digest = digest_hex(layer.digest)
        image_left = self._limits.max_image_bytes - self._decompressed
        by_image = image_left < self._limits.max_layer_bytes
        job = LayerJob(
            layer=layer,
            source_path=source_path,
            output_path=self._workspace / f"converted-{hex_digest}",
            workdir=self._workspace / f"work-{hex_digest}",
            limits=self._limits,
            max_bytes=image_left if by_image else self._limits.max_layer_bytes,
            bytes_key="max_image_bytes" if by_image else "max_layer_bytes",
        )
        key = f"convert {layer.digest}"
        self._progress.start(key, f"convert {short(layer.digest)}", layer.size)
        on_progress = lambda n: self._progress.advance(key, n)  # noqa: E731
        try:
            blob: LayerBlob | str
            if isinstance(self._driver, ArtifactDriver):
                blob = await self._runner.run(
                    artifact_layer_job, self._driver, job, on_progress=on_progress, size=layer.size
                )
            else:
                done = await self._runner.run(
                    convert_layer_job, self._driver, job, on_progress=on_progress, size=layer.size
                )
                blob = done.blob
                self.warnings += done.warnings
                self._count_decompressed(done.tar_size)
        except BaseException:
            self._progress.finish(key, "failed")
            raise
        finally:
            if source_path.parent == self._workspace:
                source_path.unlink(missing_ok=True)
        if isinstance(blob, str):
            self._progress.finish(key, f"skipped ({blob})")
        else:
            self._progress.finish(key, f"{self._driver.name} {short(blob.digest)}, {blob.size} bytes")
        return blob

    def _count_decompressed(self, size: int) -> None:
        self._decompressed += size
        if self._decompressed > self._limits.max_image_bytes:
            what = f"the image's layers decompress to {self._decompressed:,} bytes"
            raise exceeded(self._limits, "max_image_bytes", what)

    async def _local_copy(self, layer: SourceLayer) -> Path:
        """The source blob as a local file: in place for a layout (verified while converting),
        else downloaded (verified by the store) to the workspace."""
        if isinstance(self._source, OCILayout):
            path = self._source.blob_path(layer.digest)
            if not path.is_file():
                raise ConvertError(f"{self._source.location}: source layer {layer.digest} is missing")
            return path
        path = self._workspace / f"source-{digest_hex(layer.digest)}"
        desc = Descriptor(mediaType=layer.media_type, digest=layer.digest, size=layer.size)
        key = f"fetch {layer.digest}"
        async with self._fetch_slots:
            self._progress.start(key, f"fetch {short(layer.digest)}", layer.size)
            try:
                with path.open("wb") as out:
                    async for chunk in self._source.blob_chunks(desc):
                        out.write(chunk)
                        self._progress.advance(key, len(chunk))
            except BaseException:
                self._progress.finish(key, "failed")
                raise
            self._progress.finish(key, "done")
        return path
