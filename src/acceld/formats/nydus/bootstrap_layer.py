"""The bootstrap layer (§3): a gzip tar with image/image.boot and one image/<hex>.blob.meta per blob."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from isal import igzip

from acceld.formats.driver import FormatError


@dataclass(frozen=True)
class WrittenLayer:
    digest: str
    size: int
    diff_id: str


class _HashingSink(io.RawIOBase):
    def __init__(self, target: igzip.IGzipFile) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha256.update(data)
        self.target.write(data)  # type: ignore[no-untyped-call]
        return len(data)


def _entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o444
    info.size = size
    return info


def write_bootstrap_layer(path: Path, bootstrap: Path, blob_metas: Mapping[str, Path]) -> WrittenLayer:
    """Write the layer to `path` from the bootstrap file `bootstrap`; `blob_metas` maps blob hex
    digests to their .blob.meta files."""
    # isal at its best level: about zlib -6 in size, several times faster for large bootstraps
    with (
        path.open("wb") as raw,
        igzip.IGzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) as zipped,  # type: ignore[no-untyped-call]
    ):
        sink = _HashingSink(zipped)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.USTAR_FORMAT) as archive:
            archive.addfile(_entry("image/", directory=True))
            with bootstrap.open("rb") as content:
                archive.addfile(_entry("image/image.boot", bootstrap.stat().st_size), content)
            for blob_hex, meta in blob_metas.items():
                with meta.open("rb") as content:
                    archive.addfile(_entry(f"image/{blob_hex}.blob.meta", meta.stat().st_size), content)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return WrittenLayer(
        "sha256:" + digest.hexdigest(), path.stat().st_size, "sha256:" + sink.sha256.hexdigest()
    )


def read_bootstrap_file(path: Path) -> bytes:
    """A bootstrap given either as the raw `image.boot` or as a (gzip) bootstrap layer tar."""
    with path.open("rb") as handle:
        head = handle.read(1028)
    if len(head) == 1028 and head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return path.read_bytes()
    try:
        with tarfile.open(path, "r:*") as archive:
            for name in ("image/image.boot", "image.boot", "./image/image.boot"):
                try:
                    member = archive.extractfile(name)
                except KeyError:
                    continue
                if member is not None:
                    return member.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(
            f"{path.name}: neither a RAFS bootstrap nor a bootstrap layer ({first_line})"
        ) from exc
    raise FormatError(f"{path.name}: bootstrap layer has no image/image.boot")
