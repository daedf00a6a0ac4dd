"""The eStargz reader/verifier: reference blobs, our own output, the filesystem it reports, and damage."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from harness.tars import write_edge_lower, write_edge_upper

from acceld.formats.driver import FormatError, SourceLayer
from acceld.formats.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from acceld.formats.estargz.driver import EstargzDriver
from acceld.formats.estargz.reader import EstargzLayer, open_estargz, tree_from_estargz_layers
from acceld.formats.estargz.tocstream import JsonText, parse_toc
from acceld.formats.fstree import FsTree, diff_trees, tree_from_layers
from acceld.formats.limits import DEFAULT_LIMITS, LimitExceeded
from acceld.formats.records import RecordFile

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "estargz"
SMALL_CHUNK = 64 << 10

# From fixtures/estargz/README.md (Go reference output).
REFERENCE = {
    "edge.esgz": (
        "sha256:48e9dd4f0b9158fa0a24fc2d444b0fb2694a760fe678ebe9fad381f467fbc0df",
        "sha256:4a7ab7ee27fc0429c362c19920b2b799449fcf1f38b9b96c29acbeb328ce4e5c",
    ),
    "edge-minchunk50000.esgz": (
        "sha256:c873f1ee91fbf81af7fec5f21c84b1f5af6e67418512d0147db344ba00e20a88",
        "sha256:3d15867082431071fe91a5e5158d14a34f4a955d5437a937c495b438b2f05eca",
    ),
}


def convert(source: Path, target: Path, **options: Any) -> dict[str, str]:
    layer = SourceLayer(
        digest="sha256:" + "0" * 64,
        media_type="application/vnd.oci.image.layer.v1.tar",
        size=source.stat().st_size,
        diff_id="sha256:" + "0" * 64,
    )
    with source.open("rb") as tar, target.open("wb") as out:
        output = EstargzDriver(**options).convert_layer(tar, out, layer, target.parent)
    return {"diff_id": output.diff_id, **output.annotations}


def reader_tree(blobs: list[Path]) -> FsTree:
    handles = [blob.open("rb") for blob in blobs]
    try:
        return tree_from_estargz_layers(handles)
    finally:
        for handle in handles:
            handle.close()


def verify(blob: bytes, toc_digest: str | None = None) -> Any:
    return open_estargz(io.BytesIO(blob)).verify(toc_digest)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("estargz-reader")
    lower_tar, upper_tar = write_edge_lower(root / "lower.tar"), write_edge_upper(root / "upper.tar")
    small_tar = write_edge_lower(root / "small.tar", chunk_size=SMALL_CHUNK)
    blobs = {name: root / f"{name}.esgz" for name in ("lower", "upper", "small", "small-min")}
    outputs = {
        "lower": convert(lower_tar, blobs["lower"]),
        "upper": convert(upper_tar, blobs["upper"], prefetch_files=["opaque/upper-only", "data/small"]),
        "small": convert(small_tar, blobs["small"], chunk_size=SMALL_CHUNK),
        "small-min": convert(small_tar, blobs["small-min"], chunk_size=SMALL_CHUNK, min_chunk_size=100_000),
    }
    return {
        "tars": {"lower": lower_tar, "upper": upper_tar, "small": small_tar},
        "blobs": blobs,
        "outputs": outputs,
    }


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_blobs_verify(name: str) -> None:
    toc_digest, diff_id = REFERENCE[name]
    report = verify((FIXTURES / name).read_bytes(), toc_digest)
    assert (report.toc_digest, report.diff_id, report.uncompressed_size) == (toc_digest, diff_id, 8410624)
    assert (report.entries, report.chunks) == (17, 10)


def test_our_blobs_verify_and_report_what_the_driver_annotated(converted: dict[str, Any]) -> None:
    for name, blob in converted["blobs"].items():
        output = converted["outputs"][name]
        report = verify(blob.read_bytes(), output[TOC_DIGEST_ANNOTATION])
        assert report.diff_id == output["diff_id"]
        assert str(report.uncompressed_size) == output[UNCOMPRESSED_SIZE_ANNOTATION]


def test_reader_tree_equals_source(converted: dict[str, Any]) -> None:
    tars, blobs = converted["tars"], converted["blobs"]
    for layer_names in (["lower"], ["upper"], ["lower", "upper"], ["small"]):
        with_tars = [io.BytesIO(tars[name].read_bytes()) for name in layer_names]
        assert diff_trees(tree_from_layers(with_tars), reader_tree([blobs[n] for n in layer_names])) == []
    assert (
        diff_trees(
            tree_from_layers([io.BytesIO(tars["small"].read_bytes())]), reader_tree([blobs["small-min"]])
        )
        == []
    )


def test_reader_tree_of_reference_blob() -> None:
    """The TOC rounds the fractional PAX mtime of a/xattr (…20.5 → …21); tar readers truncate it."""
    expected = tree_from_layers([io.BytesIO(gzip.decompress((FIXTURES / "edge.tar.gz").read_bytes()))])
    differences = diff_trees(expected, reader_tree([FIXTURES / "edge.esgz"]))
    assert differences == ["/a/xattr: mtime 1700000000 != 1700000001"]


# --- damage ----------------------------------------------------------------------------------------------


def _toc_offset(blob: bytes) -> int:
    return int(blob[-51:][16:32], 16)


def rewrite_toc(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> tuple[bytes, str]:
    """The blob with an edited TOC (same offset, so the footer stays valid) and the new TOC digest."""
    offset = _toc_offset(blob)
    old = gzip.decompress(blob[offset:-51])
    toc = json.loads(old[512 : 512 + int(old[124:135], 8)])
    edit(toc)
    toc_json = json.dumps(toc, indent="\t").encode()
    info = tarfile.TarInfo("stargz.index.json")
    info.size = len(toc_json)
    member = info.tobuf(tarfile.USTAR_FORMAT) + toc_json + bytes(-len(toc_json) % 512) + bytes(1024)
    return blob[:offset] + gzip.compress(member) + blob[-51:], "sha256:" + hashlib.sha256(
        toc_json
    ).hexdigest()


def _entry(toc: dict[str, Any], name: str, kind: str = "reg") -> dict[str, Any]:
    return next(e for e in toc["entries"] if e["name"] == name and e["type"] == kind)


def _damaged(blob: bytes) -> dict[str, tuple[bytes, str | None, str]]:
    multi = next(e for e in open_estargz(io.BytesIO(blob)).entries if e["name"] == "data/multi-chunk")[
        "offset"
    ]
    flipped = bytearray(blob)
    flipped[multi + 5000] ^= 0xFF

    def wrong_chunk_digest(toc: dict[str, Any]) -> None:
        _entry(toc, "data/multi-chunk", "chunk")["chunkDigest"] = "sha256:" + "0" * 64

    def offset_inside_member(toc: dict[str, Any]) -> None:
        _entry(toc, "data/one-byte")["offset"] += 3

    def size_mismatch(toc: dict[str, Any]) -> None:
        entry = _entry(toc, "etc/hostname")
        entry["size"] += 1

    def missing_entry(toc: dict[str, Any]) -> None:
        toc["entries"] = [e for e in toc["entries"] if e["name"] != "dev/null"]

    def dangling_hardlink(toc: dict[str, Any]) -> None:
        _entry(toc, "links/shared-alias", "hardlink")["linkName"] = "links/nothing"

    def gap_in_chunks(toc: dict[str, Any]) -> None:
        _entry(toc, "data/multi-chunk", "chunk")["chunkOffset"] += 1

    cases: dict[str, tuple[bytes, str | None, str]] = {
        "flipped data byte": (bytes(flipped), None, "eStargz blob:"),
        "truncated": (blob[: len(blob) // 2], None, "footer"),
        "footer damaged": (blob[:-30] + b"X" + blob[-29:], None, "footer"),
        "not estargz": (gzip.compress(b"plain gzip"), None, "no eStargz footer"),
        "empty": (b"", None, "no eStargz footer"),
        "wrong expected toc digest": (blob, "sha256:" + "1" * 64, "TOC digest is"),
    }
    for name, edit, message in (
        ("wrong chunk digest", wrong_chunk_digest, "is corrupt"),
        ("offset inside a member", offset_inside_member, "not the start of a gzip member"),
        ("size mismatch", size_mismatch, "etc/hostname"),
        ("entry missing from toc", missing_entry, "dev/null"),
        ("dangling hardlink", dangling_hardlink, "missing entry"),
        ("gap in chunks", gap_in_chunks, "do not cover the file"),
    ):
        damaged, digest = rewrite_toc(blob, edit)
        cases[name] = (damaged, digest, message)
    return cases


CASES = [
    "flipped data byte",
    "truncated",
    "footer damaged",
    "not estargz",
    "empty",
    "wrong expected toc digest",
    "wrong chunk digest",
    "offset inside a member",
    "size mismatch",
    "entry missing from toc",
    "dangling hardlink",
    "gap in chunks",
]


@pytest.mark.parametrize("case", CASES)
def test_damage_is_reported(converted: dict[str, Any], case: str) -> None:
    blob, toc_digest, message = _damaged(converted["blobs"]["small"].read_bytes())[case]
    with pytest.raises(FormatError, match=re.escape(message)) as raised:
        verify(blob, toc_digest)
    assert "\n" not in str(raised.value)


def test_size_mismatch_in_unchunked_file_is_found_in_the_tar(converted: dict[str, Any]) -> None:
    def grow(toc: dict[str, Any]) -> None:
        entry = _entry(toc, "etc/hostname")
        entry["size"] += 1
        entry.pop("chunkSize", None)

    blob = converted["blobs"]["lower"].read_bytes()
    damaged, digest = rewrite_toc(blob, grow)
    with pytest.raises(FormatError):
        verify(damaged, digest)


# --- the streamed TOC ---------------------------------------------------------------------------------


def _entries_of(toc_json: str, piece: int) -> list[dict[str, Any]]:
    data = toc_json.encode()
    entries = RecordFile(None, "test-toc-")
    try:
        pieces = (data[at : at + piece] for at in range(0, len(data), piece))
        parse_toc(JsonText(pieces), entries)
        entries.seal()
        return list(entries)
    finally:
        entries.close()


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_streamed_toc_equals_json_loads_whatever_the_layout(piece: int) -> None:
    toc = {
        "entries": [
            {"name": "a", "type": "dir", "mode": 493, "xattrs": {"user.x": "eA=="}},
            {"name": 'a/\u00e9\\"\U0001f600\udc80', "type": "reg", "size": 123456789, "offset": 10**12},
        ],
        "version": 1,
        "extra": [1.5, None, True, {"nested": []}],
    }
    for text in (
        json.dumps(toc, indent="\t"),
        json.dumps(toc, separators=(",", ":")),
        " \n" + json.dumps(toc, indent=1) + "\n\n",
    ):
        assert _entries_of(text, piece) == json.loads(text)["entries"] == toc["entries"]
    assert _entries_of('{"entries": []}', piece) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "not a JSON object"),
        ('{"version": 1}', "`entries` is not a list of objects"),
        ('{"entries": {}}', "`entries` is not a list of objects"),
        ('{"entries": [1]}', "`entries` is not a list of objects"),
        ('{"entries": [{"name": "a", "type": "socket"}]}', "bad entry"),
        ('{"entries": [], "entries": []}', "appears twice"),
        ('{"entries": [{"name": "a", "type": "dir"}', "not valid JSON"),
        ('{"entries": [{"name": "a", "type": "dir"}]} x', "not valid JSON"),
        ('{"entries": [{"name": "a" "type": "dir"}]}', "not valid JSON"),
        ('{"entries": [], "version": 12', "not valid JSON"),
    ],
)
def test_streamed_toc_errors(text: str, message: str) -> None:
    for piece in (1, 1 << 20):
        with pytest.raises(FormatError, match=re.escape(message)):
            _entries_of(text, piece)


def test_chunks_out_of_blob_order_are_still_checked(converted: dict[str, Any]) -> None:
    """A TOC whose offsets do not grow (no writer makes one) takes the in-memory sorted path."""

    def swap_offsets_of(toc: dict[str, Any]) -> None:
        regular = [e for e in toc["entries"] if e["type"] == "reg" and e.get("size")]
        regular[0]["offset"], regular[1]["offset"] = regular[1]["offset"], regular[0]["offset"]

    damaged, digest = rewrite_toc(converted["blobs"]["small"].read_bytes(), swap_offsets_of)
    with pytest.raises(FormatError, match=r"is corrupt|not the start"):
        verify(damaged, digest)


def test_a_layer_at_the_entry_limit_verifies(tmp_path: Path) -> None:
    """The landmark and the TOC are the format's entries: they do not count against the layer's limit."""
    source = tmp_path / "layer.tar"
    with tarfile.open(source, "w") as tar:
        for number in range(5):
            tar.addfile(tarfile.TarInfo(f"f{number}"))
    convert(source, tmp_path / "layer.esgz")
    for limit, fails in ((5, False), (4, True)):
        limits = replace(DEFAULT_LIMITS, max_layer_entries=limit)
        with (tmp_path / "layer.esgz").open("rb") as blob, EstargzLayer(blob, limits) as layer:
            if fails:
                with pytest.raises(LimitExceeded):
                    layer.verify()
            else:
                assert layer.verify().entries == 5 + 1
