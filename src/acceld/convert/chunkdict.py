"""Fetching a converted Nydus image to local files so the Nydus driver can use it as a chunk dict.

The driver takes `chunk_dict` as the path of a bootstrap layer with the image's blobs beside it,
named by their hex digests; users name the image by reference, so the pipeline downloads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acceld.convert.errors import ConvertError
from acceld.convert.target import store_ref
from acceld.oci.digest import digest_hex
from acceld.oci.platform import Platform
from acceld.oci.reference import parse_location
from acceld.registry.stores import Stores

BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"


def is_image_reference(value: str) -> bool:
    """A chunk-dict option that names an image rather than a local bootstrap file."""
    return not Path(value).is_file()


async def fetch_chunk_dict(
    stores: Stores, reference: str, platforms: Sequence[str] | None, directory: Path
) -> Path:
    """Download the Nydus image `reference` into `directory`; the path of its bootstrap layer."""
    location = parse_location(reference)
    store = stores.open(location)
    raw = await store.get_manifest(store_ref(store, location))
    if raw.is_index:
        entries = [e for e in raw.index().manifests if e.platform is not None]
        if platforms:
            wanted = Platform.parse(platforms[0])
            entries = [e for e in entries if e.platform is not None and wanted.matches(e.platform)]
        if len(entries) != 1:
            raise ConvertError(
                f"chunk dict {reference} is an index: name one platform's image (or give one --platform)"
            )
        raw = await store.get_manifest(entries[0].digest)
    layers = raw.manifest().layers
    if not layers or (layers[-1].annotations or {}).get(BOOTSTRAP_ANNOTATION) != "true":
        raise ConvertError(f"chunk dict {reference} is not a Nydus image (no bootstrap layer)")
    directory.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        await store.fetch_blob(layer, directory / digest_hex(layer.digest))
    return directory / digest_hex(layers[-1].digest)
