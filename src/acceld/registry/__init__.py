"""Registry client (OCI distribution API over httpx) and OCI image layouts behind one store protocol."""

from acceld.registry.client import RegistryClient, RetryPolicy
from acceld.registry.errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    RegistryError,
    RegistryUnreachable,
)
from acceld.registry.layout import LayoutError, OCILayout
from acceld.registry.repository import RegistryRepository, fallback_tag
from acceld.registry.store import BlobSource, ImageStore, PutResult
from acceld.registry.stores import Stores

__all__ = [
    "AuthenticationError",
    "BlobSource",
    "ImageStore",
    "LayoutError",
    "NotFound",
    "OCILayout",
    "PermissionDenied",
    "PutResult",
    "RegistryClient",
    "RegistryError",
    "RegistryRepository",
    "RegistryUnreachable",
    "RetryPolicy",
    "Stores",
    "fallback_tag",
]
