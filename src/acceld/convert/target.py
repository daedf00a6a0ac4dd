"""Where a conversion goes: the explicit target or the default derived from the source.

Default: the source repository (or layout) with the source tag plus the driver's tag suffix
(`busybox:1.36` → `busybox:1.36-esgz`). A digest-only source (`repo@sha256:…`, or a layout
without a tag) has no tag to extend, and inventing `latest-<suffix>` would let every
digest-only conversion of the repository overwrite the same tag; its result is pushed
untagged — reachable by digest and, through its `subject`, from the source (Harbor shows it as
an accessory). Give DST explicitly to tag it.
"""

from __future__ import annotations

from acceld.convert.errors import ConvertError
from acceld.oci.reference import InvalidReference, LayoutRef, Reference, parse_location
from acceld.registry.layout import OCILayout
from acceld.registry.store import ImageStore

Location = Reference | LayoutRef

_MAX_TAG_LENGTH = 128


def _default_tag(source: Location, tag_suffix: str) -> str | None:
    """The source tag plus the suffix; None for a digest-only source."""
    if not source.tag:
        return None
    tag = source.tag + tag_suffix
    if len(tag) > _MAX_TAG_LENGTH:
        raise ConvertError(f"target tag {tag!r} is longer than {_MAX_TAG_LENGTH} characters: give DST")
    return tag


def _same_place(source: Location, target: Location) -> bool:
    if isinstance(source, LayoutRef) and isinstance(target, LayoutRef):
        same_image = (source.tag, source.digest) == (target.tag, target.digest)
        return source.path.resolve() == target.path.resolve() and same_image
    if isinstance(source, Reference) and isinstance(target, Reference):
        return source.name == target.name and source.tag == target.tag
    return False


def resolve_target(source: Location, target: str | None, tag_suffix: str) -> Location:
    """The target location; a registry target has a tag or no ref at all (push by digest).

    An explicit layout target without a tag gets the default tag, as registry references
    without a tag get `latest`.
    """
    if target is not None:
        location = parse_location(target)
        if location.digest:
            raise ConvertError(f"target {target!r} must not contain a digest: the converted digest is new")
        if isinstance(location, LayoutRef) and location.tag is None:
            location = LayoutRef(location.path, _default_tag(source, tag_suffix))
        if _same_place(source, location):
            raise ConvertError(f"target {target!r} is the source itself: it would replace what it converts")
        return location
    tag = _default_tag(source, tag_suffix)
    if isinstance(source, LayoutRef):
        return LayoutRef(source.path, tag)
    if tag is None:
        return Reference(source.registry, source.repository, None, None)
    try:
        return source.with_tag(tag)
    except InvalidReference as exc:
        raise ConvertError(str(exc)) from None


def store_ref(store: ImageStore, location: Location) -> str:
    """The tag or digest to read at `location` (`oci:PATH` without a tag: the layout's only image)."""
    if isinstance(location, LayoutRef):
        assert isinstance(store, OCILayout)
        return location.digest or location.tag or store.default_ref()
    return location.ref


def describe(location: Location, digest: str) -> str:
    """`repo:tag` when the target is tagged, else `repo@digest`."""
    if isinstance(location, LayoutRef):
        return str(location) if location.tag else f"oci:{location.path}@{digest}"
    if location.tag:
        return f"{location.name}:{location.tag}"
    return f"{location.name}@{digest}"
