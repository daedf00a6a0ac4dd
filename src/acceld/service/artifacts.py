"""What the registry says about an artifact: already accelerated? part of an index? converted before?

Used by conversion jobs (loop guard, multi-arch children) and by reconcile (missing conversions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from acceld.convert.image import HARBOR_SOURCE_DIGEST_ANNOTATION
from acceld.convert.source import load_source
from acceld.errors import AcceldError
from acceld.formats.driver import AnyDriver, ArtifactDriver, SourceLayer
from acceld.oci import mediatypes as mt
from acceld.oci.models import Manifest, RawManifest
from acceld.registry.errors import NotFound
from acceld.registry.repository import RegistryRepository
from acceld.registry.stores import Stores

# Annotations only converters write (formats/*.md; harbor-webhooks.md §6.5).
ACCELERATED_LAYER_ANNOTATIONS = (
    "containerd.io/snapshot/nydus-bootstrap",
    "containerd.io/snapshot/nydus-blob",
    "containerd.io/snapshot/stargz/toc.digest",
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
)
ACCELERATED_MANIFEST_ANNOTATIONS = (
    "containerd.io/snapshot/nydus-source-digest",
    "com.amazon.soci.index-digest",  # an image manifest that a SOCI v2 conversion annotated
    "io.goharbor.artifact.v1alpha1.acceleration.source.digest",
)
SOCI_INDEX_CONFIG_TYPES = (
    "application/vnd.amazon.soci.index.v1+json",
    "application/vnd.amazon.soci.index.v2+json",
)
NYDUS_LAYER_PREFIX = "application/vnd.oci.image.layer.nydus."


def made_by(manifest: Manifest, driver: AnyDriver) -> bool:
    """Whether `manifest` is `driver`'s output: an artifact of its types (SOCI index), or an image
    in a lazy-pulling format that is no other driver's artifact."""
    if isinstance(driver, ArtifactDriver):
        return manifest.config.media_type in driver.artifact_types or (
            manifest.artifact_type in driver.artifact_types
        )
    if manifest.config.media_type in SOCI_INDEX_CONFIG_TYPES:
        return False
    return format_marker(manifest, [driver]) is not None


def source_digest_annotation(raw: RawManifest) -> str | None:
    """The source digest a converted manifest or index names in its annotations, if any."""
    if not (raw.is_manifest or raw.is_index):
        return None
    annotations = raw.parse().annotations or {}
    return annotations.get(HARBOR_SOURCE_DIGEST_ANNOTATION)


@dataclass(frozen=True)
class SourceInfo:
    raw: RawManifest
    accelerated: str | None  # why the artifact must not be converted, None when it is a source image


def manifest_marker(manifest: Manifest, drivers: Iterable[AnyDriver] = ()) -> str | None:
    """Why `manifest` is a converter's output (or another artifact about an image), None if it is not."""
    if manifest.subject is not None:
        return f"it refers to {manifest.subject.digest} (subject): an accessory, not a source image"
    return format_marker(manifest, drivers)


def format_marker(manifest: Manifest, drivers: Iterable[AnyDriver] = ()) -> str | None:
    """Which lazy-pulling format marker `manifest` carries (annotations, media types), None if none."""
    if manifest.config.media_type in SOCI_INDEX_CONFIG_TYPES:
        return f"it is a SOCI index ({manifest.config.media_type}), not an image"
    for key in ACCELERATED_MANIFEST_ANNOTATIONS:
        if key in (manifest.annotations or {}):
            return f"it is already accelerated (annotation {key})"
    for layer in manifest.layers:
        if layer.media_type.startswith(NYDUS_LAYER_PREFIX):
            return f"it is already accelerated (layer media type {layer.media_type})"
        for key in ACCELERATED_LAYER_ANNOTATIONS:
            if key in (layer.annotations or {}):
                return f"it is already accelerated (layer annotation {key})"
    drivers = list(drivers)
    if manifest.layers and drivers:
        layers = [
            SourceLayer(
                digest=d.digest,
                media_type=d.media_type,
                size=d.size,
                diff_id="",
                annotations=d.annotations or {},
            )
            for d in manifest.layers
        ]
        for driver in drivers:
            if all(driver.is_converted(layer) for layer in layers):
                return f"its layers are already in the {driver.name} format"
    return None


async def inspect_source(repo: RegistryRepository, ref: str, drivers: Iterable[AnyDriver] = ()) -> SourceInfo:
    """Fetch the manifest or index at `ref` and decide whether it is a convertible source.

    An index with a `subject` is an accessory; one without is judged by its first child (indexes
    converted by acceld before it linked them, or by other converters).
    """
    drivers = list(drivers)
    raw = await repo.get_manifest(ref)
    if raw.is_manifest:
        return SourceInfo(raw, manifest_marker(raw.manifest(), drivers))
    if not raw.is_index:
        return SourceInfo(raw, f"it is a {raw.media_type}, not an image")
    index = raw.index()
    if index.subject is not None:
        return SourceInfo(
            raw, f"it refers to {index.subject.digest} (subject): an accessory, not a source image"
        )
    children = [d for d in index.manifests if mt.is_manifest(d.media_type)]
    if not children:
        return SourceInfo(raw, "the index lists no image manifests")
    child = await repo.get_manifest(children[0].digest)
    marker = manifest_marker(child.manifest(), drivers) if child.is_manifest else None
    return SourceInfo(raw, f"its manifests are converted images: {marker}" if marker else None)


async def parent_index(
    repo: RegistryRepository, digest: str, likely: Sequence[str], skip: Callable[[str], bool], max_tags: int
) -> str | None:
    """A tag of an index in the repository that lists `digest`, None when there is none.

    The `likely` tags (those of the same push) are read first; then the tag list, except tags
    for which `skip` is true (converted images), up to `max_tags` of them.
    """
    for tag in likely:
        if await _index_lists(repo, tag, digest):
            return tag
    tried = set(likely)
    tags = [t for t in await repo.list_tags() if t not in tried and not skip(t)][:max_tags]
    for tag in tags:
        if await _index_lists(repo, tag, digest):
            return tag
    return None


async def _index_lists(repo: RegistryRepository, tag: str, digest: str) -> bool:
    """True when `tag` is an index with `digest` among its manifests (a HEAD, then a GET for indexes)."""
    try:
        desc = await repo.resolve(tag)
        if not mt.is_index(desc.media_type):
            return False
        index = (await repo.get_manifest(desc.digest)).index()
    except NotFound:  # deleted meanwhile
        return False
    return any(child.digest == digest for child in index.manifests)


def destination_repository(stores: Stores, destination: str) -> RegistryRepository:
    """The repository `registry/repository` a rule maps results to."""
    registry, _, repository = destination.partition("/")
    return stores.client(registry).repository(repository)


async def converted_counterpart(repo: RegistryRepository, source: RawManifest, target_tag: str) -> str | None:
    """The digest at `target_tag` when it is a conversion of `source`, else None.

    A converted manifest or index names the source in `subject` (in another repository, where
    `subject` cannot be used, in the source digest annotation); an index converted before acceld
    linked indexes is recognised by its children naming the source index's children.
    """
    try:
        target = await repo.get_manifest(target_tag)
    except NotFound:
        return None
    subject = target.subject()
    if subject is not None:
        return target.digest if subject.digest == source.digest else None
    if source_digest_annotation(target) == source.digest:
        return target.digest
    if target.is_index and source.is_index:
        source_children = {d.digest for d in source.index().manifests}
        converted = target.index().manifests
        if not converted:
            return None
        child = await repo.get_manifest(converted[0].digest)
        subject = child.manifest().subject if child.is_manifest else None
        return target.digest if subject is not None and subject.digest in source_children else None
    return None


async def referrer_result(
    repo: RegistryRepository,
    source_repo: RegistryRepository,
    source: RawManifest,
    driver: AnyDriver,
    platforms: Sequence[str] | None = None,
) -> str | None:
    """The digest of an untagged result of `driver` (a SOCI v1 index, one per platform manifest and
    referring to it) in `repo` for `source` (read from `source_repo`). For an index, only once every
    selected platform with a layer the driver would index has its own: a conversion that stopped
    halfway is not taken for a finished one. None when that is not so, or when the driver's results
    are tagged."""
    if not isinstance(driver, ArtifactDriver) or not driver.referrer_result_types:
        return None
    types = driver.referrer_result_types
    if not source.is_index:
        return await _referrer(repo, source.digest, types)
    try:
        plan = await load_source(source_repo, source.digest, platforms)
    except AcceldError:
        return None  # the conversion reports what is wrong with the source
    found = None
    for image in plan.images:
        digest = await _referrer(repo, image.entry.digest, types)
        if digest is None and any(driver.skip_reason(layer) is None for layer in image.layers):
            return None
        found = found or digest
    return found


async def _referrer(repo: RegistryRepository, subject: str, types: Sequence[str]) -> str | None:
    for artifact_type in types:
        for referrer in await repo.referrers(subject, artifact_type):
            return referrer.digest
    return None
