"""One conversion from start to finish: source → converted layers → config/manifest → push.

Both kinds of driver (`acceld.formats.driver`) run through here: a layer driver's blobs become
converted configs/manifests/index built below; an artifact driver's per-layer artifacts go to its
own image hook, which returns what to push (always into the source repository, where the layers
are). Nothing is pushed before every layer of every selected platform is converted and every
manifest is built, so a corrupt source layer leaves the target untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acceld.convert.api import ConversionRequest, ConversionResult, ConvertOptions
from acceld.convert.cache import LayerCache, default_cache_dir
from acceld.convert.chunkdict import fetch_chunk_dict, is_image_reference
from acceld.convert.drivers import make_driver, worker_modules
from acceld.convert.errors import ConvertError, NotApplicableError
from acceld.convert.formats import is_nydus_image
from acceld.convert.image import converted_config, converted_index, converted_manifest, source_annotations
from acceld.convert.layers import ConvertedLayer, LayerConverter, Outcome
from acceld.convert.push import Pusher, PushPlan
from acceld.convert.source import SourceImage, SourcePlan, load_source
from acceld.convert.target import Location, describe, resolve_target, store_ref
from acceld.convert.workers import ProcessRunner
from acceld.errors import AcceldError
from acceld.formats.driver import AnyDriver, ArtifactDriver, Driver, LayerBlob, LayerResult, PlatformArtifacts
from acceld.formats.limits import check_layer_count
from acceld.oci import mediatypes as mt
from acceld.oci.digest import digest_hex, sha256_digest
from acceld.oci.mediatypes import layer_compression
from acceld.oci.models import Descriptor, InvalidManifest, RawManifest
from acceld.oci.reference import LayoutRef, Reference, parse_location
from acceld.progress import NullProgress
from acceld.registry.errors import NotFound
from acceld.registry.store import ImageStore
from acceld.registry.stores import Stores

if TYPE_CHECKING:
    from acceld.config import AcceldConfig
    from acceld.progress import ProgressReporter


@dataclass(frozen=True)
class ConvertedImage:
    source: SourceImage
    layers: tuple[LayerBlob, ...]  # converted layers in manifest order, then the driver's extra layers
    config: tuple[Descriptor, bytes]
    manifest: RawManifest


async def run_conversion(
    request: ConversionRequest,
    config: AcceldConfig,
    progress: ProgressReporter | None,
    options: ConvertOptions,
) -> ConversionResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    make_driver(request.driver, request.options)  # bad driver options fail before any I/O
    source_location = parse_location(request.source)
    cache = LayerCache(options.cache_dir or default_cache_dir()) if options.use_cache else None
    workspace = cache.work_dir() if cache else Path(tempfile.mkdtemp(prefix="acceld-convert-"))
    try:
        async with Stores(config, plain_http=options.plain_http, insecure=options.insecure) as stores:
            driver = make_driver(request.driver, await _local_options(request, stores, workspace))
            runner = ProcessRunner(options.workers, preload=worker_modules(request.driver))
            target_location = resolve_target(source_location, request.target, driver.tag_suffix)
            if isinstance(driver, ArtifactDriver) or driver.reads_compressed:
                _require_source_repository(source_location, target_location, driver.name)
            source = stores.open(source_location)
            plan = await load_source(source, store_ref(source, source_location), request.platforms)
            _refuse_unconvertible(plan, driver)
            for image in plan.images:
                what = f"source {image.raw.digest} ({image.platform})"
                check_layer_count(config.limits, len(image.layers), what)
            if not isinstance(driver, ArtifactDriver) and driver.reads_compressed:
                _require_gzip_layers(plan, driver.name)
            existing: Mapping[str, Descriptor] = {}
            if isinstance(driver, ArtifactDriver):
                existing = await _existing_artifacts(driver, source, target_location.tag, plan)
            converter = LayerConverter(
                driver, source, workspace, cache, runner, progress, existing, config.limits
            )
            layers = await converter.convert_all(layer for image in plan.images for layer in image.layers)
            if isinstance(driver, ArtifactDriver):
                push_plan, tagged = await _artifact_plan(driver, plan, layers, workspace / "image")
                tag = target_location.tag if tagged else None
            else:
                unlinked_from = None if request.link_subject else _repository(source_location)
                push_plan = await _converted_plan(
                    driver, plan, layers, str(source_location), workspace, unlinked_from
                )
                tag = target_location.tag
            root = push_plan.root
            target = stores.open(target_location, create=True)
            lock_dir = (options.cache_dir or default_cache_dir()) / "locks"
            untagged = None
            if tag is not None:
                tag, untagged = await _target_tag(source, source_location, plan.root.digest, tag)
            await Pusher(target, source, cache, progress, lock_dir).push(push_plan, tag)
    finally:
        await asyncio.to_thread(shutil.rmtree, workspace, True)
    return ConversionResult(
        source=request.source,
        source_digest=plan.root.digest,
        target=describe(target_location if tag else _untagged(target_location), root.digest),
        target_digest=root.digest,
        source_size=_size(
            [(layer.digest, layer.size) for image in plan.images for layer in image.layers]
            + [(image.manifest.config.digest, image.manifest.config.size) for image in plan.images]
        ),
        target_size=_size(
            [(blob.digest, blob.size) for blob in push_plan.blobs]
            + [(desc.digest, desc.size) for desc, _ in push_plan.configs]
        ),
        seconds=time.monotonic() - started,
        layers_converted=sum(1 for layer in layers.values() if layer.outcome is Outcome.CONVERTED),
        layers_cached=sum(1 for layer in layers.values() if layer.outcome is Outcome.CACHED),
        untagged=untagged,
        warnings=tuple(converter.warnings),
    )


async def _target_tag(
    source: ImageStore, source_location: Location, source_digest: str, tag: str
) -> tuple[str | None, str | None]:
    """The tag to push the result with, and why it is pushed untagged instead (None: it is not).

    The source tag is read again just before the push: when it moved to another image meanwhile
    (a newer push, or events delivered out of order), tagging this result would roll the converted
    tag back to an older image, so the result is pushed by digest, reachable through `subject`.
    """
    if source_location.tag is None:
        return tag, None
    try:
        current = (await source.resolve(source_location.tag)).digest
    except NotFound:
        return None, f"the source tag {source_location.tag} was deleted meanwhile: pushed untagged"
    if current != source_digest:
        return None, f"the source tag {source_location.tag} now points at {current}: pushed untagged"
    return tag, None


async def _local_options(request: ConversionRequest, stores: Stores, workspace: Path) -> dict[str, Any]:
    """The driver options with a chunk-dict image reference replaced by its downloaded bootstrap."""
    options = dict(request.options)
    chunk_dict = options.get("chunk_dict")
    if isinstance(chunk_dict, str) and is_image_reference(chunk_dict):
        bootstrap = await fetch_chunk_dict(stores, chunk_dict, request.platforms, workspace / "chunk-dict")
        options["chunk_dict"] = str(bootstrap)
    return options


async def _converted_plan(
    driver: Driver,
    plan: SourcePlan,
    layers: Mapping[str, ConvertedLayer],
    source_reference: str,
    workspace: Path,
    unlinked_from: str | None,
) -> PushPlan:
    """The converted images; `unlinked_from` names the source repository in annotations instead of
    linking each result to its source through `subject` (results outside the source repository)."""
    blobs = {digest: layer.blob for digest, layer in layers.items() if layer.blob is not None}
    images = [
        await _build_image(driver, image, blobs, source_reference, workspace / f"finalize-{n}", unlinked_from)
        for n, image in enumerate(plan.images)
    ]
    root, children = _root_manifest(plan, images, driver, unlinked_from)
    return PushPlan(
        blobs=list({blob.digest: blob for image in images for blob in image.layers}.values()),
        configs=[image.config for image in images],
        children=children,
        root=root,
        unverified=_not_written_here(layers),
    )


async def _artifact_plan(
    driver: ArtifactDriver, plan: SourcePlan, layers: Mapping[str, ConvertedLayer], workdir: Path
) -> tuple[PushPlan, bool]:
    """The artifact driver's image hook; the bool says whether the root is pushed with the tag."""
    platforms = [
        PlatformArtifacts(
            entry=image.entry,
            manifest=image.raw,
            platform=image.platform,
            layers=[
                LayerResult(layer, layers[layer.digest].blob, layers[layer.digest].reason)
                for layer in image.layers
            ],
        )
        for image in plan.images
    ]
    workdir.mkdir()
    try:
        built = await asyncio.to_thread(driver.build_image, plan.root, platforms, workdir)
    except AcceldError:
        raise
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ConvertError(f"{driver.name} driver failed to build the image: {problem}") from exc
    if built is None:
        skipped = {layer.source.digest: layer.reason for layer in layers.values() if layer.reason}
        reasons = "; ".join(f"{digest_hex(d)[:12]}: {why}" for d, why in skipped.items())
        raise NotApplicableError(f"{driver.name}: not applicable, no layer qualifies ({reasons})")
    if built.root is None and not built.manifests:
        raise ConvertError(f"{driver.name} driver built nothing to push")
    root = built.root or built.manifests[-1]
    children = list(built.manifests if built.root else built.manifests[:-1])
    push_plan = PushPlan(list(built.blobs), [], children, root, _not_written_here(layers))
    return push_plan, built.root is not None


def _not_written_here(layers: Mapping[str, ConvertedLayer]) -> frozenset[str]:
    """The layer blobs this conversion did not write itself (passed through or from the cache)."""
    return frozenset(
        layer.blob.digest
        for layer in layers.values()
        if layer.blob is not None and layer.outcome is not Outcome.CONVERTED
    )


async def _existing_artifacts(
    driver: ArtifactDriver, repository: ImageStore, tag: str | None, plan: SourcePlan
) -> Mapping[str, Descriptor]:
    """What the driver pushed to this repository before (the target tag's index entries and the
    source manifests' referrers of its artifact types), as the driver recognises it."""
    found: dict[str, Descriptor] = {}
    if tag:
        with contextlib.suppress(NotFound, InvalidManifest):
            root = await repository.get_manifest(tag)
            if root.is_index:
                for entry in root.index().manifests:
                    if entry.artifact_type in driver.artifact_types:
                        found[entry.digest] = entry
    for image in plan.images:
        for artifact_type in driver.artifact_types:
            with contextlib.suppress(AcceldError):
                for entry in await repository.referrers(image.raw.digest, artifact_type):
                    found[entry.digest] = entry
    manifests = []
    for digest in found:
        with contextlib.suppress(NotFound, InvalidManifest):
            manifests.append(await repository.get_manifest(digest))
    return driver.existing_artifacts(manifests)


def _require_source_repository(source: Location, target: Location, driver: str) -> None:
    """Artifacts refer to the source layers, which the snapshotter fetches from the same repository."""
    if type(source) is not type(target) or _repository(source) != _repository(target):
        raise ConvertError(f"{driver} artifacts must go to the source repository (where its layers are)")


def _repository(location: Location) -> str:
    return str(location.path.resolve()) if isinstance(location, LayoutRef) else location.name


def _untagged(location: Location) -> Location:
    if isinstance(location, LayoutRef):
        return LayoutRef(location.path, None)
    return Reference(location.registry, location.repository, None, None)


def _refuse_unconvertible(plan: SourcePlan, driver: AnyDriver) -> None:
    """Images without layers have nothing to convert; Nydus blobs are not tar layers, so no driver
    converts them (nor rebuilds a bootstrap over them); an image already in the driver's format
    would only be copied under a second suffix."""
    for image in plan.images:
        if not image.layers:
            raise ConvertError(
                f"source {image.raw.digest} ({image.platform}) has no layers: nothing to convert"
            )
        if is_nydus_image(image.manifest):
            raise ConvertError(
                f"source {image.raw.digest} ({image.platform}) is already a Nydus image: convert its source"
            )
        if all(driver.is_converted(layer) for layer in image.layers):
            raise ConvertError(
                f"source {image.raw.digest} ({image.platform}) is already in the {driver.name} format: "
                "nothing to convert"
            )


def _require_gzip_layers(plan: SourcePlan, driver: str) -> None:
    """A driver that indexes the stored layers in place (Nydus zran) can only index gzip ones."""
    for image in plan.images:
        for layer in image.layers:
            if layer_compression(layer.media_type) != "gzip":
                raise ConvertError(
                    f"source layer {layer.digest} ({layer.media_type}) is not gzip: {driver} images that "
                    "reference the source layers can only reference gzip layers"
                )


def _size(blobs: list[tuple[str, int]]) -> int:
    return sum(dict(blobs).values())


async def _build_image(
    driver: Driver,
    image: SourceImage,
    blobs: Mapping[str, LayerBlob],
    source_reference: str,
    workdir: Path,
    unlinked_from: str | None,
) -> ConvertedImage:
    converted = [blobs[layer.digest] for layer in image.layers]
    workdir.mkdir()
    try:
        additions = await asyncio.to_thread(driver.finalize, converted, workdir)
    except AcceldError:
        raise
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ConvertError(f"{driver.name} driver failed to finish the image: {problem}") from exc
    all_layers = (*converted, *additions.extra_layers)
    config_bytes = converted_config(image.config, all_layers, additions)
    config_desc = Descriptor(
        mediaType=mt.OCI_CONFIG, digest=sha256_digest(config_bytes), size=len(config_bytes)
    )
    annotations = {
        **additions.manifest_annotations,
        **source_annotations(driver.name, image.entry.digest, unlinked_from),
        **driver.source_annotations(image.entry.digest, source_reference),
    }
    subject = image.entry if unlinked_from is None else None
    manifest = converted_manifest(image.manifest, subject, config_desc, all_layers, annotations)
    return ConvertedImage(image, all_layers, (config_desc, config_bytes), manifest)


def _root_manifest(
    plan: SourcePlan, images: list[ConvertedImage], driver: Driver, unlinked_from: str | None
) -> tuple[RawManifest, list[RawManifest]]:
    if plan.index is None:
        return images[0].manifest, []
    children = [image.manifest for image in images]
    index = converted_index(
        plan.index,
        plan.root.descriptor() if unlinked_from is None else None,
        [(image.source.entry, image.manifest) for image in images],
        source_annotations(driver.name, plan.root.digest, unlinked_from),
    )
    return index, children
