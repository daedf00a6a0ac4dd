"""`acceld inspect` and `acceld copy`: images between registries and OCI layouts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from acceld.cli.app import ConfigOption, InsecureOption, PlainHttpOption, app, open_stores, run
from acceld.convert.describe import image_kind, index_kind, layer_format
from acceld.convert.target import store_ref
from acceld.errors import AcceldError
from acceld.oci import mediatypes as mt
from acceld.oci.models import ImageConfig, RawManifest, parse_config
from acceld.oci.platform import Platform
from acceld.oci.reference import LayoutRef, Reference, parse_location
from acceld.progress import format_size, progress_reporter
from acceld.registry.store import ImageStore
from acceld.registry.stores import Stores


def _manifest_summary(raw: RawManifest, config: ImageConfig | None) -> list[str]:
    manifest = raw.manifest()
    lines = [f"Kind:       {image_kind(manifest)}"]
    if config is not None:
        lines.append(f"Platform:   {config.platform}")
        if config.created:
            lines.append(f"Created:    {config.created}")
    if manifest.artifact_type:
        lines.append(f"Artifact:   {manifest.artifact_type}")
    if manifest.subject:
        lines.append(f"Subject:    {manifest.subject.digest}")
    lines.append(
        f"Config:     {manifest.config.digest} ({manifest.config.media_type}, {manifest.config.size} B)"
    )
    total = sum(layer.size for layer in manifest.layers)
    lines.append(f"Layers:     {len(manifest.layers)} ({format_size(total)})")
    lines += [
        f"  {layer.digest}  {format_size(layer.size):>9}  {layer_format(layer):<16} {layer.media_type}"
        for layer in manifest.layers
    ]
    return lines


async def _accessories(store: ImageStore, digest: str) -> list[str]:
    """The referrers of `digest` (converted images, signatures, SBOMs, SOCI indexes): one line each."""
    try:
        referrers = await store.referrers(digest)
    except AcceldError as exc:
        return [f"Accessories: cannot list referrers: {exc}"]
    lines = [f"Accessories: {len(referrers)}"]
    for referrer in referrers:
        kind = referrer.artifact_type or referrer.media_type
        if mt.is_manifest(referrer.media_type) or mt.is_index(referrer.media_type):
            try:
                found = await store.get_manifest(referrer.digest)
                kind = index_kind(found.index()) if found.is_index else image_kind(found.manifest())
            except AcceldError as exc:
                kind = f"{kind} (unreadable: {exc})"
        lines.append(f"  {referrer.digest}  {format_size(referrer.size):>9}  {kind}")
    return lines


def _index_summary(raw: RawManifest) -> list[str]:
    index = raw.index()
    lines = [f"Kind:       {index_kind(index)}", f"Manifests:  {len(index.manifests)}"]
    for entry in index.manifests:
        platform = str(Platform.model_validate(entry.platform.to_json())) if entry.platform else "-"
        artifact = f"  {entry.artifact_type}" if entry.artifact_type else ""
        lines.append(f"  {platform:<16} {entry.digest}  {entry.media_type}{artifact}")
    return lines


async def _inspect(ref: str, raw_output: bool, config: Path | None, plain_http: bool, insecure: bool) -> None:
    location = parse_location(ref)
    async with open_stores(config, plain_http, insecure) as stores:
        store = stores.open(location)
        raw = await store.get_manifest(store_ref(store, location))
        if raw_output:
            sys.stdout.buffer.write(raw.data)
            sys.stdout.flush()
            return
        lines = [f"Name:       {location}", f"Digest:     {raw.digest}", f"MediaType:  {raw.media_type}"]
        if raw.is_index:
            lines += _index_summary(raw)
        else:
            config_desc = raw.manifest().config
            image_config = None
            if config_desc.media_type in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
                image_config = parse_config(await store.get_blob_bytes(config_desc))
            lines += _manifest_summary(raw, image_config)
        lines += await _accessories(store, raw.digest)
        typer.echo("\n".join(lines))


@app.command()
def inspect(
    ref: Annotated[
        str, typer.Argument(help="Image: [registry/]repo[:tag][@digest] or oci:PATH[:TAG][@DIGEST].")
    ],
    raw: Annotated[bool, typer.Option("--raw", help="Print the manifest or index bytes exactly.")] = False,
    config: ConfigOption = None,
    plain_http: PlainHttpOption = False,
    insecure: InsecureOption = False,
) -> None:
    """Show an image's manifest or index (platforms, config, each layer's format, accessories)."""
    run(_inspect(ref, raw, config, plain_http, insecure))


async def _copy(
    src: Reference | LayoutRef,
    dst: Reference | LayoutRef,
    platforms: list[Platform],
    all_platforms: bool,
    stores: Stores,
) -> str:
    async with stores:
        src_store = stores.open(src)
        dst_store = stores.open(dst, create=True)
        if isinstance(dst, Reference):
            dst_tag = None if dst.digest else dst.tag
        else:
            dst_tag = dst.tag or src.tag or "latest"
        with progress_reporter() as progress:
            from acceld.registry.copy import copy_image  # httpx: only `copy` needs it here

            result = await copy_image(
                src_store,
                store_ref(src_store, src),
                dst_store,
                dst_tag,
                platforms=platforms,
                all_platforms=all_platforms,
                progress=progress,
            )
        if isinstance(dst, Reference) and dst.digest and dst.digest != result.digest:
            raise AcceldError(f"copied image has digest {result.digest}, not the requested {dst.digest}")
        return result.digest


@app.command()
def copy(
    src: Annotated[
        str,
        typer.Argument(help="Source image: [registry/]repo[:tag][@digest] or oci:PATH[:TAG][@DIGEST]."),
    ],
    dst: Annotated[str, typer.Argument(help="Destination: [registry/]repo[:tag] or oci:PATH[:TAG].")],
    platform: Annotated[
        list[str] | None,
        typer.Option("--platform", help="os/arch[/variant] to copy from an index (repeatable)."),
    ] = None,
    all_platforms: Annotated[
        bool, typer.Option("--all-platforms", help="Copy a whole index, digest unchanged.")
    ] = False,
    config: ConfigOption = None,
    plain_http: PlainHttpOption = False,
    insecure: InsecureOption = False,
) -> None:
    """Copy an image between registries and OCI layouts, digests unchanged.

    From an index, without --platform or --all-platforms, the host platform's image is copied.
    """

    async def main() -> str:
        if platform and all_platforms:
            raise AcceldError("use either --platform or --all-platforms, not both")
        platforms = [Platform.parse(p) for p in platform or []]
        return await _copy(
            parse_location(src),
            parse_location(dst),
            platforms,
            all_platforms,
            open_stores(config, plain_http, insecure),
        )

    typer.echo(run(main()))
