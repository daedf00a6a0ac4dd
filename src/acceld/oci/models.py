"""Typed models of descriptors, manifests, indexes and image configs.

Every model keeps unknown fields, so parsing and re-serialising loses nothing. Still, a
manifest whose digest must be kept is never re-serialised: `RawManifest` carries the exact
bytes a registry or layout returned, and copies push those bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from acceld.errors import AcceldError
from acceld.oci import mediatypes as mt
from acceld.oci.digest import sha256_digest
from acceld.oci.platform import Platform


class InvalidManifest(AcceldError):
    """A manifest, index or config that is not valid JSON of the expected shape."""


class OCIModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def to_json(self) -> bytes:
        """Compact JSON with fields in declaration order, then unknown fields."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


class Descriptor(OCIModel):
    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    data: str | None = None
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")


class Manifest(OCIModel):
    """An OCI image manifest or a Docker schema2 manifest (same shape)."""

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor] = Field(default_factory=list)
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class Index(OCIModel):
    """An OCI image index or a Docker manifest list."""

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: list[Descriptor] = Field(default_factory=list)
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class RootFS(OCIModel):
    type: str = "layers"
    diff_ids: list[str] = Field(default_factory=list)


class History(OCIModel):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfig(OCIModel):
    """The image configuration blob (OCI and Docker share it); `config` is kept as a plain dict."""

    created: str | None = None
    author: str | None = None
    architecture: str = ""
    os: str = ""
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: list[str] | None = Field(default=None, alias="os.features")
    variant: str | None = None
    config: dict[str, Any] | None = None
    rootfs: RootFS = Field(default_factory=RootFS)
    history: list[History] | None = None

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "document"
    return f"{where}: {err['msg']}"


def parse_config(data: bytes) -> ImageConfig:
    try:
        return ImageConfig.model_validate(_load_json(data, "image config"))
    except ValidationError as exc:
        raise InvalidManifest(f"invalid image config: {_first_error(exc)}") from None


def detect_media_type(data: bytes, declared: str | None = None) -> str:
    """The manifest media type: the declared one if it is a manifest/index type, else from the JSON."""
    if declared and (mt.is_manifest(declared) or mt.is_index(declared)):
        return declared
    doc = _load_json(data, "manifest")
    inner = doc.get("mediaType")
    if isinstance(inner, str) and inner:
        return inner
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1_MANIFEST
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc:
        return mt.OCI_MANIFEST
    return declared or "application/octet-stream"


@dataclass(frozen=True)
class RawManifest:
    """A manifest or index exactly as stored: bytes, media type and digest of those bytes."""

    data: bytes
    media_type: str
    digest: str

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> RawManifest:
        return cls(data, detect_media_type(data, media_type), sha256_digest(data))

    @property
    def is_index(self) -> bool:
        return mt.is_index(self.media_type)

    @property
    def is_manifest(self) -> bool:
        return mt.is_manifest(self.media_type)

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor(mediaType=self.media_type, digest=self.digest, size=len(self.data), **extra)

    def manifest(self) -> Manifest:
        if not self.is_manifest:
            raise InvalidManifest(f"{self.digest} is a {self.media_type}, not an image manifest")
        try:
            return Manifest.model_validate(_load_json(self.data, "manifest"))
        except ValidationError as exc:
            raise InvalidManifest(f"invalid manifest {self.digest}: {_first_error(exc)}") from None

    def index(self) -> Index:
        if not self.is_index:
            raise InvalidManifest(f"{self.digest} is a {self.media_type}, not an index")
        try:
            return Index.model_validate(_load_json(self.data, "index"))
        except ValidationError as exc:
            raise InvalidManifest(f"invalid index {self.digest}: {_first_error(exc)}") from None

    def parse(self) -> Manifest | Index:
        if self.is_index:
            return self.index()
        if self.is_manifest:
            return self.manifest()
        raise InvalidManifest(f"unsupported manifest media type {self.media_type} ({self.digest})")

    def subject(self) -> Descriptor | None:
        """The `subject` of this manifest or index, if it has one."""
        return self.parse().subject if (self.is_index or self.is_manifest) else None
