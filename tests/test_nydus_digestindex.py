"""The digest index that numbers a blob's distinct chunks (instead of a dict keyed by digests)."""

from __future__ import annotations

import hashlib

import pytest

from acceld.formats.nydus.digestindex import DigestIndex


def _digest(number: int) -> bytes:
    return hashlib.sha256(b"%d" % number).digest()


def test_numbers_digests_in_order_across_growth_and_finds_only_added_ones() -> None:
    with DigestIndex() as index:
        for number in range(5000):  # 160 kB of digests: most of them wait in the file
            assert index.find(_digest(number)) == -1
            assert index.add(_digest(number)) == number
        assert len(index) == 5000
        assert all(index.find(_digest(number)) == number for number in range(5000))
        assert all(index.find(_digest(number)) == -1 for number in range(5000, 6000))
        assert all(index.digest(number) == _digest(number) for number in range(5000))
        assert all(index.head(number) == int.from_bytes(_digest(number)[:2]) for number in range(5000))
        assert b"".join(index.pieces()) == b"".join(_digest(number) for number in range(5000))


def test_digests_sharing_a_prefix_are_told_apart() -> None:
    with DigestIndex() as index:
        digests = [bytes(31) + bytes([last]) for last in range(200)]
        for number, digest in enumerate(digests):
            assert index.add(digest) == number
        assert [index.find(digest) for digest in digests] == list(range(200))
        assert index.find(bytes(32 - 1) + b"\xff") == -1


def test_release_keeps_the_digests() -> None:
    with DigestIndex() as index:
        index.add(_digest(1))
        index.release()
        assert b"".join(index.pieces()) == _digest(1)
        assert index.find(_digest(1)) == -1


def test_a_digest_of_another_width_is_refused() -> None:
    with DigestIndex() as index, pytest.raises(ValueError):
        index.add(b"short")
