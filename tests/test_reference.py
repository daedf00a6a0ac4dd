"""Image reference parsing and normalisation (distribution grammar, Docker defaults, oci: layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acceld.oci.reference import (
    InvalidReference,
    LayoutRef,
    Reference,
    parse_layout,
    parse_location,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar", "latest", None),
        ("foo/bar", "docker.io", "foo/bar", "latest", None),
        ("localhost/foo", "localhost", "foo", "latest", None),
        ("localhost:5000/foo/bar:v1", "localhost:5000", "foo/bar", "v1", None),
        ("127.0.0.1:5000/test/img", "127.0.0.1:5000", "test/img", "latest", None),
        ("ghcr.io/a/b/c:tag_1.2-x", "ghcr.io", "a/b/c", "tag_1.2-x", None),
        (f"ghcr.io/a/b@{DIGEST}", "ghcr.io", "a/b", None, DIGEST),
        (f"ghcr.io/a/b:v1@{DIGEST}", "ghcr.io", "a/b", "v1", DIGEST),
        ("Registry/foo", "Registry", "foo", "latest", None),
        ("[::1]:5000/foo", "[::1]:5000", "foo", "latest", None),
        ("a.b-c.d/x__y.z--w", "a.b-c.d", "x__y.z--w", "latest", None),
        ("docker://127.0.0.1:5000/x:y", "127.0.0.1:5000", "x", "y", None),
    ],
)
def test_parse_and_normalise(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER",
        "foo/Bar",
        "foo bar",
        "foo:",
        "foo@",
        "foo@sha256:abc",
        f"foo@md5:{'a' * 32}",
        "foo:-bad",
        "foo:" + "x" * 129,
        "-foo/bar",
        "foo//bar",
        "foo/bar/",
        "foo_/bar",
        "a:b:c",
        "ab" * 32,
        "host:port/x",
        "my-.host/x",
    ],
)
def test_invalid_references_raise_one_line_error(text: str) -> None:
    with pytest.raises(InvalidReference) as excinfo:
        parse_reference(text)
    assert "\n" not in str(excinfo.value)


def test_str_is_the_normalised_full_form() -> None:
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse_reference(f"h:1/r:t@{DIGEST}")) == f"h:1/r:t@{DIGEST}"
    assert str(parse_reference(f"h:1/r@{DIGEST}")) == f"h:1/r@{DIGEST}"


def test_ref_prefers_digest_and_api_host() -> None:
    ref = parse_reference(f"busybox:1@{DIGEST}")
    assert ref.ref == DIGEST
    assert ref.api_host == "registry-1.docker.io"
    assert parse_reference("h:1/r").api_host == "h:1"
    assert parse_reference("h:1/r").with_tag("v2") == Reference("h:1", "r", "v2")
    with pytest.raises(InvalidReference):
        parse_reference("h:1/r").with_tag("bad tag")


def test_layout_locations() -> None:
    assert parse_location("oci:/tmp/x:v1") == LayoutRef(Path("/tmp/x"), "v1")
    assert parse_location("oci:rel/dir") == LayoutRef(Path("rel/dir"), None)
    assert str(parse_layout("oci:/a/b:t")) == "oci:/a/b:t"
    digest = "sha256:" + "ab" * 32
    assert parse_location(f"oci:/tmp/x:v1@{digest}") == LayoutRef(Path("/tmp/x"), "v1", digest)
    assert parse_location(f"oci:/tmp/x@{digest}") == LayoutRef(Path("/tmp/x"), None, digest)
    assert str(parse_layout(f"oci:/a/b:t@{digest}")) == f"oci:/a/b:t@{digest}"
    assert parse_location("oci:/tmp/mail@host:v1") == LayoutRef(Path("/tmp/mail@host"), "v1")
    assert isinstance(parse_location("localhost:5000/x"), Reference)
    for bad in ("oci:", "oci::tag", "oci:/x:", "/x:y"):
        with pytest.raises(InvalidReference):
            parse_layout(bad)


_component = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,8}){0,2}", fullmatch=True)
_repository = st.lists(_component, min_size=2, max_size=4).map("/".join)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}", fullmatch=True)
_registry = st.one_of(
    st.just("localhost"),
    st.builds(
        lambda h, p: f"{h}.example:{p}",
        st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
        st.integers(1, 65535),
    ),
)
_digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@given(_registry, _repository, st.one_of(st.none(), _tag), st.one_of(st.none(), _digest))
def test_roundtrip_of_generated_references(
    registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    text = f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    expected_tag = tag if tag or digest else "latest"
    assert ref == Reference(registry, repository, expected_tag, digest)
    assert parse_reference(str(ref)) == ref


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return
    assert parse_reference(str(ref)) == ref
