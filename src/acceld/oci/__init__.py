"""OCI image model: references, media types, digests, descriptors, manifests, indexes, configs, platforms."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from acceld.oci import mediatypes

if TYPE_CHECKING:
    from acceld.oci.digest import (
        Digester,
        DigestMismatch,
        InvalidDigest,
        is_digest,
        sha256_digest,
        verify_bytes,
    )
    from acceld.oci.models import (
        Descriptor,
        History,
        ImageConfig,
        Index,
        InvalidManifest,
        Manifest,
        RawManifest,
        RootFS,
        parse_config,
    )
    from acceld.oci.platform import InvalidPlatform, Platform
    from acceld.oci.reference import (
        InvalidReference,
        LayoutRef,
        Reference,
        parse_layout,
        parse_location,
        parse_reference,
    )

# The pydantic models cost a good part of a second to import; modules that only need digests or
# media types (layer workers, formats) must not pay for them, so the re-exports load on first use.
_LAZY = {
    "Digester": "digest", "DigestMismatch": "digest", "InvalidDigest": "digest", "is_digest": "digest",
    "sha256_digest": "digest", "verify_bytes": "digest",
    "Descriptor": "models", "History": "models", "ImageConfig": "models", "Index": "models",
    "InvalidManifest": "models", "Manifest": "models", "RawManifest": "models", "RootFS": "models",
    "parse_config": "models",
    "InvalidPlatform": "platform", "Platform": "platform",
    "InvalidReference": "reference", "LayoutRef": "reference", "Reference": "reference",
    "parse_layout": "reference", "parse_location": "reference", "parse_reference": "reference",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'acceld.oci' has no attribute {name!r}")
    return getattr(importlib.import_module(f"acceld.oci.{module}"), name)


__all__ = [
    "Descriptor",
    "DigestMismatch",
    "Digester",
    "History",
    "ImageConfig",
    "Index",
    "InvalidDigest",
    "InvalidManifest",
    "InvalidPlatform",
    "InvalidReference",
    "LayoutRef",
    "Manifest",
    "Platform",
    "RawManifest",
    "Reference",
    "RootFS",
    "is_digest",
    "mediatypes",
    "parse_config",
    "parse_layout",
    "parse_location",
    "parse_reference",
    "sha256_digest",
    "verify_bytes",
]
