"""The shared Go-semantics tar header reader (formats/tarreader.py): the cases the odd-layer tars
(written by GNU tar and Python's tarfile) do not reach — PAX sparse maps 0.0 and 0.1, global
headers, extension headers at the end of the stream."""

from __future__ import annotations

import io
import tarfile

import pytest

from acceld.formats.driver import FormatError
from acceld.formats.tarreader import TYPE_REG, Header, HeaderReader


class _Source:
    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.position = 0

    def read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.position += len(data)
        return data


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _header(name: str, typeflag: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = typeflag, size, 1_700_000_000
    return info.tobuf(tarfile.USTAR_FORMAT)


def _pax(records: list[tuple[str, str]], typeflag: bytes = tarfile.XHDTYPE) -> bytes:
    payload = b""
    for key, value in records:
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while length != len(body) + len(str(length)):  # the length counts its own digits
            length = len(body) + len(str(length))
        payload += str(length).encode() + body
    return _header("PaxHeaders/x", typeflag, len(payload)) + _padded(payload)


def _file(name: str, stored: bytes) -> bytes:
    return _header(name, tarfile.REGTYPE, len(stored)) + _padded(stored)


def _read_all(tar: bytes, *, sparse: bool = True, strict_globals: bool = False) -> list[tuple[Header, bytes]]:
    source = _Source(tar + bytes(1024))
    reader = HeaderReader(source, sparse=sparse, strict_globals=strict_globals)
    entries = []
    while (header := reader.next()) is not None:
        entries.append((header, source.read(header.payload)))
    return entries


def test_pax_sparse_0_1_map_and_real_name_and_size() -> None:
    records = [
        ("GNU.sparse.map", "0,3,10,2"),
        ("GNU.sparse.numblocks", "2"),
        ("GNU.sparse.size", "20"),
        ("GNU.sparse.name", "dir/real"),
    ]
    ((header, data),) = _read_all(_pax(records) + _file("GNUSparseFile.0/real", b"abcde"))
    assert (header.name, header.typeflag, header.size) == ("dir/real", TYPE_REG, 20)
    assert header.sparse == [(0, 3), (10, 2)]
    assert data == b"abcde"


def test_pax_sparse_0_0_repeated_offset_records_build_the_map() -> None:
    records = [
        ("GNU.sparse.size", "9"),
        ("GNU.sparse.numblocks", "2"),
        ("GNU.sparse.offset", "1"),
        ("GNU.sparse.numbytes", "2"),
        ("GNU.sparse.offset", "6"),
        ("GNU.sparse.numbytes", "1"),
    ]
    ((header, data),) = _read_all(_pax(records) + _file("f", b"xyz"))
    assert (header.size, header.sparse, data) == (9, [(1, 2), (6, 1)], b"xyz")


def test_pax_sparse_1_0_map_is_read_from_the_payload() -> None:
    stored = _padded(b"2\n0\n4\n8\n1\n") + b"dataX"
    records = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", "12")]
    ((header, data),) = _read_all(_pax(records) + _file("f", stored) + _file("next", b"n"))[:1]
    assert (header.size, header.sparse, header.payload, data) == (12, [(0, 4), (8, 1)], 5, b"dataX")


def test_sparse_map_count_mismatch_is_refused() -> None:
    records = [("GNU.sparse.map", "0,3"), ("GNU.sparse.numblocks", "2"), ("GNU.sparse.size", "9")]
    with pytest.raises(FormatError, match="numblocks"):
        _read_all(_pax(records) + _file("f", b"abc"))


def test_sparse_files_are_refused_when_not_accepted() -> None:
    records = [("GNU.sparse.map", "0,3"), ("GNU.sparse.numblocks", "1"), ("GNU.sparse.size", "9")]
    with pytest.raises(FormatError, match="sparse"):
        _read_all(_pax(records) + _file("f", b"abc"), sparse=False)


def test_global_headers_are_skipped_or_refused_when_strict() -> None:
    tar = _pax([("uid", "7"), ("path", "other")], tarfile.XGLTYPE) + _file("f", b"1")
    ((header, data),) = _read_all(tar)
    assert (header.name, header.uid, data) == ("f", 0, b"1")
    with pytest.raises(FormatError, match="PAX global header with file attributes"):
        _read_all(tar, strict_globals=True)
    comment_only = _pax([("comment", "git archive")], tarfile.XGLTYPE) + _file("f", b"1")
    assert [h.name for h, _ in _read_all(comment_only, strict_globals=True)] == ["f"]


def test_unread_payload_is_skipped_and_pax_applies_to_the_next_entry_only() -> None:
    tar = _pax([("path", "long/name"), ("mtime", "12.5")]) + _file("short", b"x" * 700) + _file("g", b"2")
    source = _Source(tar + bytes(1024))
    reader = HeaderReader(source, sparse=True, strict_globals=False)
    first, second = reader.next(), reader.next()
    assert first is not None and second is not None
    assert (first.name, first.mtime_ns, first.start) == ("long/name", 12_500_000_000, 0)
    assert (second.name, second.mtime_ns, source.read(1)) == ("g", 1_700_000_000 * 10**9, b"2")
    assert reader.next() is None


def test_extension_header_without_entry_is_truncated() -> None:
    with pytest.raises(FormatError, match="extension header without a following entry"):
        _read_all(_pax([("path", "x")]))
