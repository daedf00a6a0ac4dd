"""OCI image model: references, media types, digests, descriptors, manifests, indexes, configs, platforms."""

from acceld.oci import mediatypes
from acceld.oci.digest import Digester, DigestMismatch, InvalidDigest, is_digest, sha256_digest, verify_bytes
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
