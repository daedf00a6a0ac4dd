"""An independent SOCI checker for the tests (soci.md §13): zTOCs decoded with harness.flatbuf,
checkpoints re-inflated with harness.deflate_resume (Python's zlib), the TOC compared with
Python's `tarfile` — nothing from acceld's SOCI writer or reader."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import struct
import tarfile
from dataclasses import dataclass
from typing import Any

from harness.deflate_resume import resume
from harness.flatbuf import FlatTable

WINDOW = 32768
POINT = 8 + 8 + 1 + WINDOW
TYPES = {b"0": "reg", b"\0": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char", b"4": "block",
         b"5": "dir", b"6": "fifo"}  # fmt: skip


@dataclass
class ZtocSummary:
    entries: int
    spans: int
    algorithm: int
    names: list[str]


def decode_ztoc(data: bytes) -> dict[str, Any]:
    root = FlatTable.root(data)
    toc, info = root.table(4), root.table(5)
    assert toc is not None and info is not None
    files = []
    for item in toc.tables(0):
        files.append(
            {
                "name": item.string(0),
                "type": item.string(1),
                "offset": item.scalar(2, "q"),
                "size": item.scalar(3, "q"),
                "linkname": item.string(4) or "",
                "mode": item.scalar(5, "q"),
                "uid": item.scalar(6, "I"),
                "gid": item.scalar(7, "I"),
                "uname": item.string(8) or "",
                "gname": item.string(9) or "",
                "mod_time": item.string(10),
                "xattrs": {x.string(0): x.string(1) for x in item.tables(13)},
            }
        )
    return {
        "version": root.string(0),
        "build_tool": root.string(1),
        "compressed_size": root.scalar(2, "q"),
        "uncompressed_size": root.scalar(3, "q"),
        "files": files,
        "algorithm": info.scalar(0, "b", 1),
        "max_span_id": info.scalar(1, "i"),
        "span_digests": info.strings(2),
        "checkpoints": info.bytes(3),
    }


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_ztoc(ztoc_bytes: bytes, layer: bytes, gzipped: bool, span_size: int) -> ZtocSummary:
    """Assert every §13 items 6 to 9 for one zTOC and its layer bytes."""
    z = decode_ztoc(ztoc_bytes)
    assert z["version"] == "0.9"
    assert z["compressed_size"] == len(layer)
    assert len(z["span_digests"]) == z["max_span_id"] + 1
    content = gzip.decompress(layer) if gzipped else layer
    if gzipped:
        assert z["algorithm"] == 1
        blob = z["checkpoints"]
        count, zinfo_span = struct.unpack_from("<iq", blob, 0)
        assert zinfo_span == span_size
        assert len(blob) == 12 + count * POINT and count == len(z["span_digests"])
        points = []
        for n in range(count):
            at = 12 + n * POINT
            c_in, c_out, bits = struct.unpack_from("<qqB", blob, at)
            points.append((c_in, c_out, bits, blob[at + 17 : at + POINT]))
        header = 10  # the harness and docker write plain gzip headers
        assert points[0][:3] == (header, 0, 0)
        for (a_in, a_out, _, _), (b_in, b_out, _, _) in itertools.pairwise(points):
            assert b_in > a_in and b_out > a_out
        for n, (c_in, c_out, bits, window) in enumerate(points):
            assert 0 <= bits <= 7 and c_out < z["uncompressed_size"]
            last = n + 1 == count
            start = c_in - 1 if bits else c_in
            end = len(layer) if last else points[n + 1][0]
            stop = z["uncompressed_size"] if last else points[n + 1][1]
            span = layer[start:end]
            assert _sha(span) == z["span_digests"][n], f"span {n} digest"
            assert window == (b"\0" * WINDOW + content[:c_out])[-WINDOW:], f"span {n} window"
            assert resume(span, bits, window, stop - c_out) == content[c_out:stop], f"span {n} inflate"
    else:
        assert z["algorithm"] == 2
        root = FlatTable.root(z["checkpoints"])
        assert (root.scalar(0, "i"), root.scalar(1, "q"), root.scalar(2, "q")) == (2, span_size, len(layer))
        slices = [layer[i : i + span_size] for i in range(0, max(len(layer), 1), span_size)]
        assert [_sha(s) for s in slices] == z["span_digests"]
    _check_toc(z, content)
    return ZtocSummary(
        len(z["files"]), len(z["span_digests"]), z["algorithm"], [f["name"] for f in z["files"]]
    )


def _check_toc(z: dict[str, Any], content: bytes) -> None:
    files = z["files"]
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as archive:
        members = archive.getmembers()
    assert len(files) == len(members)
    end = 0
    for entry, member in zip(files, members, strict=True):
        raw_name = entry["name"]
        assert raw_name.rstrip("/") == member.name.rstrip("/")
        assert entry["type"] == TYPES.get(member.type, "?"), raw_name
        assert entry["offset"] == member.offset_data, raw_name
        assert entry["size"] == (member.size if member.isreg() else 0), raw_name
        assert entry["linkname"] == member.linkname
        assert entry["mode"] & 0o7777 == member.mode & 0o7777
        assert (entry["uid"], entry["gid"], entry["uname"], entry["gname"]) == (
            member.uid, member.gid, member.uname, member.gname)  # fmt: skip
        assert entry["mod_time"].endswith("Z") and entry["mod_time"][:19] == _utc(member.mtime)
        for key, value in member.pax_headers.items():
            assert entry["xattrs"].get(key) == value, (raw_name, key)
        assert entry["offset"] >= end
        end = entry["offset"] + entry["size"] + (-entry["size"] % 512)
    assert end <= z["uncompressed_size"] <= len(content)


def _utc(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
