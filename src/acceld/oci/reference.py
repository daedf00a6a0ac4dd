"""Image references: `[registry[:port]/]repo[:tag][@digest]` and OCI layouts `oci:PATH[:TAG]`.

Registry references follow the distribution reference grammar with Docker's normalisation:
no registry → `docker.io`, a single-component Docker Hub name → `library/<name>`, no tag and no
digest → `latest`. The first path component is a registry when it contains `.` or `:`, is
`localhost`, or has upper-case letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from acceld.errors import AcceldError
from acceld.oci.digest import InvalidDigest, validate_digest

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
LAYOUT_PREFIX = "oci:"

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REPOSITORY_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])"
_REGISTRY_RE = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_MAX_NAME_LENGTH = 255


class InvalidReference(AcceldError):
    """A string that is not a valid image reference."""


def api_host(registry: str) -> str:
    """The host serving the distribution API (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API_HOST if registry == DEFAULT_REGISTRY else registry


@dataclass(frozen=True)
class Reference:
    """A normalised registry image reference."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        return api_host(self.registry)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, _check_tag(tag), None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class LayoutRef:
    """An OCI image layout directory, optionally one tag (`org.opencontainers.image.ref.name`)
    and a manifest digest (which wins over the tag, as in registry references)."""

    path: Path
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{LAYOUT_PREFIX}{self.path}" + (f":{self.tag}" if self.tag else "")
        return text + (f"@{self.digest}" if self.digest else "")


def _check_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise InvalidReference(f"invalid tag {tag!r}")
    return tag


def parse_reference(text: str) -> Reference:
    """Parse and normalise a registry reference; raise InvalidReference if malformed."""
    original = text
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    if not text:
        raise InvalidReference("invalid reference: empty")
    if any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference {original!r}: contains whitespace")
    if _HEX64_RE.match(text):
        raise InvalidReference(f"invalid reference {original!r}: a bare 64-hex id is not a repository")

    name, _, digest = text.partition("@")
    if digest:
        try:
            validate_digest(digest)
        except InvalidDigest:
            raise InvalidReference(f"invalid reference {original!r}: bad digest {digest!r}") from None
    elif text.endswith("@"):
        raise InvalidReference(f"invalid reference {original!r}: empty digest")

    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"invalid reference {original!r}: bad tag {tag!r}")

    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, rest
        if not _REGISTRY_RE.match(registry):
            raise InvalidReference(f"invalid reference {original!r}: bad registry {registry!r}")
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"

    if repository != repository.lower():
        raise InvalidReference(f"invalid reference {original!r}: repository name must be lowercase")
    if not _REPOSITORY_RE.match(repository):
        raise InvalidReference(f"invalid reference {original!r}: bad repository name {repository!r}")
    if len(registry) + 1 + len(repository) > _MAX_NAME_LENGTH:
        raise InvalidReference(f"invalid reference {original!r}: name longer than {_MAX_NAME_LENGTH}")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest or None)


def parse_layout(text: str) -> LayoutRef:
    """Parse `oci:PATH[:TAG][@DIGEST]`: the first `:` after the prefix separates the tag, as in
    skopeo; a trailing `@algorithm:hex` names a manifest by digest, as `acceld convert` prints results."""
    if not text.startswith(LAYOUT_PREFIX):
        raise InvalidReference(f"invalid layout reference {text!r}: expected oci:PATH[:TAG][@DIGEST]")
    rest, _, digest = text[len(LAYOUT_PREFIX) :].rpartition("@")
    try:
        validate_digest(digest)
    except InvalidDigest:
        rest, digest = text[len(LAYOUT_PREFIX) :], ""
    path, sep, tag = rest.partition(":")
    if not path:
        raise InvalidReference(f"invalid layout reference {text!r}: empty path")
    if sep and (not tag or any(c.isspace() for c in tag)):
        raise InvalidReference(f"invalid layout reference {text!r}: bad tag {tag!r}")
    return LayoutRef(Path(path), tag or None, digest or None)


def parse_location(text: str) -> Reference | LayoutRef:
    """A CLI image argument: `oci:PATH[:TAG]` or a registry reference (optionally `docker://`)."""
    if text.startswith(LAYOUT_PREFIX):
        return parse_layout(text)
    return parse_reference(text)
