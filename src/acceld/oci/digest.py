"""Content digests (`<algorithm>:<hex>`): computing, validating and verifying them."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from acceld.errors import AcceldError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_LOWER_HEX = re.compile(r"[0-9a-f]+")


class InvalidDigest(AcceldError):
    """A string that is not a valid content digest."""


class DigestMismatch(AcceldError):
    """Content whose digest or size differs from what its descriptor promised."""


def validate_digest(digest: str) -> str:
    """Return `digest` unchanged if it is a well-formed sha256/sha512 digest, else raise InvalidDigest."""
    if not _DIGEST_RE.match(digest):
        raise InvalidDigest(f"invalid digest {digest!r}")
    algorithm, hex_part = digest.split(":", 1)
    expected = _HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidDigest(f"unsupported digest algorithm in {digest!r}")
    if len(hex_part) != expected or not _LOWER_HEX.fullmatch(hex_part):
        raise InvalidDigest(f"invalid {algorithm} digest {digest!r}")
    return digest


def is_digest(value: str) -> bool:
    try:
        validate_digest(value)
    except InvalidDigest:
        return False
    return True


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    return digest.split(":", 1)[1]


class Digester:
    """Incremental digest and size of a stream, checked against an expected digest."""

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _HEX_LENGTH:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    @classmethod
    def for_digest(cls, digest: str) -> Digester:
        return cls(validate_digest(digest).split(":", 1)[0])

    def update(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def verify(self, digest: str, size: int | None = None, *, what: str = "content") -> None:
        """Raise DigestMismatch unless the bytes seen so far have `digest` (and `size` if given)."""
        if size is not None and self.size != size:
            raise DigestMismatch(f"{what} {digest}: expected {size} bytes, got {self.size}")
        if self.digest != digest:
            raise DigestMismatch(f"{what} {digest}: content has digest {self.digest}")


def verify_bytes(data: bytes, digest: str, size: int | None = None, *, what: str = "content") -> None:
    digester = Digester.for_digest(digest)
    digester.update(data)
    digester.verify(digest, size, what=what)


def file_digest(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    """Digest and size of a file, read in 1 MiB pieces."""
    digester = Digester(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digester.update(chunk)
    return digester.digest, digester.size
