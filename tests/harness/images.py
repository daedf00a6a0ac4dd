"""Build OCI image layouts from layer tars, independently of acceld's own code (ground truth for tests).

Every blob, manifest and index is written deterministically (gzip mtime 0, compact sorted-key JSON),
so the same inputs always give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "2024-01-01T00:00:00Z"

Compression = Literal["gzip", "zstd", "none"]


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def as_json(self) -> dict[str, str]:
        fields = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            fields["variant"] = self.variant
        return fields


AMD64 = Platform()
ARM64 = Platform(architecture="arm64", variant="v8")


@dataclass(frozen=True)
class LayoutImage:
    """One tagged manifest or index inside an OCI layout."""

    layout: Path
    tag: str
    digest: str
    media_type: str
    size: int
    platform: Platform | None = None  # set for single-platform manifests

    @property
    def ref(self) -> str:
        """The reference skopeo and acceld understand: `oci:LAYOUT:TAG`."""
        return f"oci:{self.layout}:{self.tag}"

    def descriptor(self) -> dict[str, Any]:
        descriptor: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            descriptor["platform"] = self.platform.as_json()
        return descriptor

    def read_json(self) -> dict[str, Any]:
        return read_blob_json(self.layout, self.digest)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout / "blobs" / algorithm / hex_digest


def read_blob_json(layout: Path, digest: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(blob_path(layout, digest).read_bytes())
    return value


def init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if not (layout / "index.json").exists():
        (layout / "index.json").write_bytes(
            canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        )


def add_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    """Store `data` as a blob; return its descriptor."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    if not path.exists():
        path.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def add_blob_file(layout: Path, source: Path, media_type: str) -> dict[str, Any]:
    """Move the file `source` into the layout as a blob (streamed hash); return its descriptor."""
    sha = hashlib.sha256()
    with source.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    digest = "sha256:" + sha.hexdigest()
    size = source.stat().st_size
    path = blob_path(layout, digest)
    if path.exists():
        source.unlink()
    else:
        shutil.move(source, path)
    return {"mediaType": media_type, "digest": digest, "size": size}


def tag_in_index(layout: Path, descriptor: dict[str, Any], tag: str) -> None:
    """Point `tag` at `descriptor` in index.json, replacing an earlier entry with the same tag."""
    index = json.loads((layout / "index.json").read_bytes())
    entries = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    entries.append({**descriptor, "annotations": {REF_NAME: tag}})
    index["manifests"] = entries
    (layout / "index.json").write_bytes(canonical_json(index))


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def compress_layer(tar_file: Path, out: Path, compression: Compression) -> None:
    with tar_file.open("rb") as src, out.open("wb") as dst:
        if compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=dst, mtime=0, compresslevel=6) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
        elif compression == "zstd":
            zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
        else:
            shutil.copyfileobj(src, dst, 1 << 20)


def build_image(
    layout: Path,
    layers: Sequence[Path],
    tag: str,
    *,
    platform: Platform = AMD64,
    docker: bool = False,
    compression: Compression = "gzip",
    config_overrides: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> LayoutImage:
    """Write an image of the uncompressed layer tars `layers` (bottom first) into `layout`, tagged `tag`.

    `docker=True` writes a Docker schema2 manifest with Docker media types (gzip layers only).
    """
    if docker and compression != "gzip":
        raise ValueError("Docker schema2 layers are gzip here")
    init_layout(layout)
    layer_type = DOCKER_LAYER if docker else OCI_LAYER[compression]
    descriptors, diff_ids = [], []
    for tar_file in layers:
        diff_ids.append(sha256_file(tar_file))
        staged = layout / f".staging-{tar_file.name}"
        compress_layer(tar_file, staged, compression)
        descriptors.append(add_blob_file(layout, staged, layer_type))
    config: dict[str, Any] = {
        "created": CREATED,
        **platform.as_json(),
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": f"acceld test harness: layer {t.name}"} for t in layers
        ],
        **(config_overrides or {}),
    }
    config_descriptor = add_blob(layout, canonical_json(config), DOCKER_CONFIG if docker else OCI_CONFIG)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config_descriptor,
        "layers": descriptors,
    }
    if annotations:
        manifest["annotations"] = annotations
    descriptor = add_blob(layout, canonical_json(manifest), manifest["mediaType"])
    tag_in_index(layout, descriptor, tag)
    return LayoutImage(
        layout, tag, descriptor["digest"], descriptor["mediaType"], descriptor["size"], platform
    )


def build_index(
    layout: Path, images: Sequence[LayoutImage], tag: str, *, docker: bool = False
) -> LayoutImage:
    """Write an OCI index (or, with `docker=True`, a Docker manifest list) of `images`, tagged `tag`."""
    init_layout(layout)
    media_type = DOCKER_LIST if docker else OCI_INDEX
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": [i.descriptor() for i in images]}
    descriptor = add_blob(layout, canonical_json(index), media_type)
    tag_in_index(layout, descriptor, tag)
    return LayoutImage(layout, tag, descriptor["digest"], media_type, descriptor["size"])


def build_referrer(
    layout: Path, subject: LayoutImage, artifact_type: str, payload: bytes, tag: str, payload_type: str
) -> LayoutImage:
    """Write an OCI artifact manifest (empty config, one `payload` blob) whose `subject` is `subject`."""
    init_layout(layout)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": add_blob(layout, b"{}", EMPTY_CONFIG),
        "layers": [add_blob(layout, payload, payload_type)],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    }
    descriptor = add_blob(layout, canonical_json(manifest), OCI_MANIFEST)
    tag_in_index(layout, descriptor, tag)
    return LayoutImage(layout, tag, descriptor["digest"], OCI_MANIFEST, descriptor["size"])


def tar_directory(source: Path, out: Path, *, mtime: int | None = None) -> Path:
    """Tar the tree under `source` (names relative to it, sorted, owner root) into `out`.

    `mtime` clamps every entry's modification time (for trees created by the test itself).
    """

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if mtime is not None:
            info.mtime = mtime
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(source.rglob("*"), key=lambda p: p.relative_to(source).as_posix()):
            found = tar.gettarinfo(path, arcname=path.relative_to(source).as_posix())
            if found is None:  # sockets have no tar representation
                continue
            info = normalise(found)
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out


def child_descriptors(image: LayoutImage) -> list[dict[str, Any]]:
    """The manifests an index lists, or the config and layers a manifest references."""
    document = image.read_json()
    if "manifests" in document:
        return list(document["manifests"])
    return [document["config"], *document["layers"]]


def export_dir(image: LayoutImage, dest: Path) -> Path:
    """Write `image` and all its children as a containers `dir:` directory (keeps any media type).

    skopeo's `oci:` transport ignores Docker media types in index.json, so Docker schema2 images
    are pushed with `skopeo copy --all --preserve-digests dir:DEST docker://…` instead.
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "version").write_text("Directory Transport Version: 1.1\n")
    shutil.copyfile(blob_path(image.layout, image.digest), dest / "manifest.json")
    pending: list[tuple[LayoutImage, str | None]] = [(image, None)]
    while pending:
        current, instance = pending.pop()
        if instance is not None:
            shutil.copyfile(blob_path(current.layout, current.digest), dest / f"{instance}.manifest.json")
        for child in child_descriptors(current):
            if child["mediaType"] in (OCI_MANIFEST, DOCKER_MANIFEST):
                sub = LayoutImage(image.layout, "", child["digest"], child["mediaType"], child["size"])
                pending.append((sub, child["digest"].partition(":")[2]))
            else:
                shutil.copyfile(
                    blob_path(image.layout, child["digest"]), dest / child["digest"].partition(":")[2]
                )
    return dest
