"""Where a conversion goes when DST is omitted or partial."""

from __future__ import annotations

import pytest

from acceld.convert.errors import ConvertError
from acceld.convert.target import describe, resolve_target
from acceld.oci.reference import parse_location

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("reg.io/team/app:v1", None, "reg.io/team/app:v1-esgz"),
        ("reg.io/team/app", None, "reg.io/team/app:latest-esgz"),  # the user asked for latest
        (f"reg.io/team/app:v1@{DIGEST}", None, "reg.io/team/app:v1-esgz"),
        (f"reg.io/team/app@{DIGEST}", None, "reg.io/team/app"),  # untagged, never latest-esgz
        ("reg.io/team/app:v1", "other.io/x/y:z", "other.io/x/y:z"),
        ("oci:/images/app:v1", None, "oci:/images/app:v1-esgz"),
        ("oci:/images/app", None, "oci:/images/app"),
        ("reg.io/team/app:v1", "oci:/out", "oci:/out:v1-esgz"),
        ("reg.io/team/app:v1", "oci:/out:mine", "oci:/out:mine"),
    ],
)
def test_targets(source: str, target: str | None, expected: str) -> None:
    assert str(resolve_target(parse_location(source), target, "-esgz")) == expected


def test_untagged_targets_are_described_by_digest() -> None:
    untagged = resolve_target(parse_location(f"reg.io/team/app@{DIGEST}"), None, "-nydus")
    assert describe(untagged, "sha256:" + "b" * 64) == "reg.io/team/app@sha256:" + "b" * 64
    tagged = resolve_target(parse_location("reg.io/team/app:v1"), None, "-nydus")
    assert describe(tagged, "sha256:" + "b" * 64) == "reg.io/team/app:v1-nydus"


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("reg.io/team/app:v1", f"reg.io/team/app@{DIGEST}", "must not contain a digest"),
        ("reg.io/team/app:" + "v" * 125, None, "longer than 128 characters"),
        ("reg.io/team/app:v1", "reg.io/team/app:v1", "is the source itself"),
        ("reg.io/team/app", "reg.io/team/app:latest", "is the source itself"),
        ("oci:/images/app:v1", "oci:/images/../images/app:v1", "is the source itself"),
    ],
)
def test_bad_targets(source: str, target: str | None, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        resolve_target(parse_location(source), target, "-esgz")
