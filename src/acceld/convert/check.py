"""`acceld check`: is a converted image well-formed, and does it hold the same files as its source?

For every platform of the image: the layers are read with the reader of their format (which
checks the format's structure and every digest it carries), turned into an `FsTree`, and
compared with the tree of the source image, found through the manifest's `subject` or given
explicitly. The source layers are verified (blob digest, diff_id) as they are read.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from acceld.config import AcceldConfig
from acceld.convert.check_soci import check_soci, find_soci_index
from acceld.convert.errors import ConvertError
from acceld.convert.formats import (
    ESTARGZ_METADATA_FILES,
    ESTARGZ_TOC,
    FORMATS,
    NYDUS_REF,
    FormatReader,
    LayerFile,
    detect_format,
)
from acceld.convert.source import SourceImage, load_source
from acceld.convert.streams import SourceTarStream
from acceld.convert.target import store_ref
from acceld.errors import AcceldError
from acceld.formats.driver import SourceLayer
from acceld.formats.fstree import FsTree, apply_layer_tar, diff_trees
from acceld.formats.limits import LimitExceeded, Limits, check_layer_count
from acceld.formats.targuard import PathError, TarGuard
from acceld.oci.digest import digest_hex, file_digest
from acceld.oci.models import Descriptor, RawManifest
from acceld.oci.platform import Platform
from acceld.oci.reference import LayoutRef, parse_location
from acceld.registry.errors import NotFound
from acceld.registry.layout import OCILayout
from acceld.registry.store import ImageStore
from acceld.registry.stores import Stores

_READ_SIZE = 1 << 20


@dataclass
class PlatformCheck:
    """The verdict for one converted manifest."""

    platform: str
    digest: str
    format: str = "unknown"
    source: str = ""
    problems: list[str] = field(default_factory=list)  # structural failures
    differences: list[str] = field(default_factory=list)  # tree differences from the source
    paths: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.differences


async def check_image(
    image: str,
    config: AcceldConfig,
    *,
    source: str | None = None,
    platforms: Sequence[str] | None = None,
    plain_http: bool = False,
    insecure: bool = False,
) -> list[PlatformCheck]:
    """Check every (selected) platform of `image`; raises AcceldError only when nothing can be checked."""
    workspace = Path(tempfile.mkdtemp(prefix="acceld-check-"))
    try:
        async with Stores(config, plain_http=plain_http, insecure=insecure) as stores:
            location = parse_location(image)
            store = stores.open(location)
            plan = await load_source(store, store_ref(store, location), platforms)
            source_store: ImageStore = store
            source_images: Sequence[SourceImage] | None = None
            if source is not None:
                source_location = parse_location(source)
                source_store = stores.open(source_location)
                # a layout named without a tag or digest is where the `subject` is looked up
                named = source_location.tag or source_location.digest
                if not (isinstance(source_location, LayoutRef) and named is None):
                    source_ref = store_ref(source_store, source_location)
                    source_images = (await load_source(source_store, source_ref, None)).images
            root_subject = plan.root.subject()
            results = []
            for n, converted in enumerate(plan.images):
                work = workspace / str(n)
                work.mkdir()
                check = await _check_one(
                    store, converted, source_store, source_images, work, config.limits, root_subject
                )
                results.append(check)
            return results
    finally:
        await asyncio.to_thread(shutil.rmtree, workspace, True)


async def _check_one(
    store: ImageStore,
    converted: SourceImage,
    source_store: ImageStore,
    source_images: Sequence[SourceImage] | None,
    work: Path,
    limits: Limits,
    root_subject: Descriptor | None = None,
) -> PlatformCheck:
    verdict = PlatformCheck(platform=converted.platform, digest=converted.raw.digest)
    try:
        try:
            image_format = detect_format(converted.manifest)
        except ConvertError:
            soci = await find_soci_index(store, converted)
            if soci is None:
                raise
            sources = (source_store, source_images, root_subject)
            return await _check_soci_one(store, converted, soci, *sources, work)
        verdict.format = image_format
        # a Nydus image adds its bootstrap layer to the source's
        check_layer_count(limits, len(converted.manifest.layers) - 1, f"image {converted.raw.digest}")
        original = await _find_source(source_store, converted, source_images)
        verdict.source = original.raw.digest
        check_layer_count(limits, len(original.layers), f"source image {original.raw.digest}")
        diff_ids = converted.config.rootfs.diff_ids
        files = [
            LayerFile(
                await _local_blob(store, layer, work, verdict),
                layer,
                diff_id,
                await _referenced_layer(store, layer, original, work, verdict),
            )
            for layer, diff_id in zip(converted.manifest.layers, diff_ids, strict=True)
        ]
        try:
            actual = await asyncio.to_thread(FORMATS[image_format].read_tree, files, work, limits)
        except AcceldError as exc:
            verdict.problems.append(f"{image_format}: {exc}")
            return verdict
        with actual:
            expected = await _source_tree(source_store, original, work, limits)
            with expected:
                verdict.paths = len(expected)
                verdict.differences = await asyncio.to_thread(
                    compare_trees, expected, actual, FORMATS[image_format]
                )
    except AcceldError as exc:
        verdict.problems.append(str(exc))
    return verdict


async def _check_soci_one(
    store: ImageStore,
    converted: SourceImage,
    soci: tuple[str, RawManifest],
    source_store: ImageStore,
    source_images: Sequence[SourceImage] | None,
    root_subject: Descriptor | None,
    work: Path,
) -> PlatformCheck:
    """A SOCI image: v2 compares its layers with the source (`--source` or the index's subject);
    a v1 index annotates the source image itself."""
    version, index = soci
    verdict = PlatformCheck(converted.platform, converted.raw.digest, format=f"soci {version}")
    source: SourceImage | None = None
    if version == "v2":
        if source_images is None and root_subject is not None:
            source_images = (await load_source(source_store, root_subject.digest, None)).images
        if source_images is None:
            verdict.problems.append("no source to compare with: the index has no subject, give --source")
            return verdict
        source = await _find_source(source_store, converted, source_images)
    verdict.source = source.raw.digest if source else converted.raw.digest
    verdict.problems, verdict.paths = await check_soci(store, converted, version, index, source, work)
    return verdict


def compare_trees(expected: FsTree, actual: FsTree, reader: FormatReader) -> list[str]:
    """`diff_trees`, with mtimes compared within the format's rounding tolerance."""
    return diff_trees(
        expected, actual, ignore_fields=reader.ignored_fields, mtime_tolerance=reader.mtime_tolerance
    )


async def _find_source(
    store: ImageStore, converted: SourceImage, candidates: Sequence[SourceImage] | None
) -> SourceImage:
    """The source image: among `candidates` the one of the same platform, else the `subject`."""
    if candidates is not None:
        wanted = converted.config.platform
        matches = [c for c in candidates if Platform.parse(c.platform).matches(wanted)]
        if len(matches) != 1:
            raise ConvertError(f"--source has {len(matches)} images for platform {converted.platform}")
        return matches[0]
    subject = converted.manifest.subject
    if subject is None:
        raise ConvertError(f"{converted.raw.digest} has no subject: name its source with --source")
    try:
        plan = await load_source(store, subject.digest, None)
    except NotFound:
        raise ConvertError(
            f"its source {subject.digest} (subject) is not in {store.location}: "
            "name where it is with --source (e.g. --source oci:PATH)"
        ) from None
    return plan.images[0]


async def _referenced_layer(
    store: ImageStore, layer: Descriptor, original: SourceImage, work: Path, verdict: PlatformCheck
) -> Path | None:
    """The source layer a Nydus zran ref blob indexes, fetched from the converted image's repository
    (where a runtime reads it); it must be a layer of the source image."""
    named = (layer.annotations or {}).get(NYDUS_REF)
    if named is None:
        return None
    source_layer = next((s for s in original.layers if s.digest == named), None)
    if source_layer is None:
        verdict.problems.append(f"ref blob {layer.digest} indexes {named}, which is not a source layer")
        return None
    desc = Descriptor(mediaType=source_layer.media_type, digest=named, size=source_layer.size)
    return await _local_blob(store, desc, work, verdict)


async def _local_blob(store: ImageStore, layer: Descriptor, work: Path, verdict: PlatformCheck) -> Path:
    """The converted layer as a local file; a digest mismatch is recorded, not raised, so the
    format reader still reports what exactly is wrong."""
    if isinstance(store, OCILayout):
        path = store.blob_path(layer.digest)
        try:
            digest, size = await asyncio.to_thread(file_digest, path, layer.digest.split(":", 1)[0])
        except OSError as exc:
            raise ConvertError(f"layer {layer.digest} in {store.location}: {exc.strerror}") from None
        if (digest, size) != (layer.digest, layer.size):
            verdict.problems.append(f"layer {layer.digest}: file has digest {digest} ({size} bytes)")
        return path
    path = work / f"layer-{digest_hex(layer.digest)}"
    await store.fetch_blob(layer, path)
    return path


async def _source_tree(store: ImageStore, image: SourceImage, work: Path, limits: Limits) -> FsTree:
    tree = FsTree(work)
    try:
        await _apply_source_layers(tree, store, image, work, limits)
    except BaseException:
        tree.close()
        raise
    return tree


async def _apply_source_layers(
    tree: FsTree, store: ImageStore, image: SourceImage, work: Path, limits: Limits
) -> None:
    decompressed = 0
    for layer in image.layers:
        desc = Descriptor(mediaType=layer.media_type, digest=layer.digest, size=layer.size)
        if isinstance(store, OCILayout):
            path = store.blob_path(layer.digest)
        else:
            path = work / f"source-{digest_hex(layer.digest)}"
            await store.fetch_blob(desc, path)
        image_left = limits.max_image_bytes - decompressed
        guard = (
            TarGuard(limits, image_left, "max_image_bytes")
            if image_left < limits.max_layer_bytes
            else TarGuard(limits)
        )
        decompressed += await asyncio.to_thread(_apply_source_layer, tree, path, layer, guard)


def _apply_source_layer(tree: FsTree, path: Path, layer: SourceLayer, guard: TarGuard) -> int:
    """Apply one source layer to `tree`; its uncompressed size."""
    try:
        blob = path.open("rb")
    except OSError as exc:
        raise ConvertError(f"source layer {layer.digest}: {exc.strerror}") from None
    with blob:
        stream = SourceTarStream(cast(BinaryIO, blob), layer, guard=guard)
        try:
            apply_layer_tar(tree, cast(BinaryIO, io.BufferedReader(stream, _READ_SIZE)))
            stream.finish()
        except (LimitExceeded, PathError) as exc:
            raise type(exc)(f"source layer {layer.digest}: {exc}") from None
    if ESTARGZ_TOC in layer.annotations:  # an eStargz source's TOC and landmark are not its files
        for name in ESTARGZ_METADATA_FILES:
            tree.remove(name)
    return stream.tar_size
