"""zstd:chunked conversion of every test tar, checked with the real zstd CLI, raw byte parsing,
Python's tarfile and our independent reader."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard
from harness.tars import write_edge_lower, write_edge_upper

from acceld.formats.driver import FormatError, LayerOutput, SourceLayer
from acceld.formats.fstree import diff_trees, tree_from_layers
from acceld.formats.zstdchunked import ZstdChunkedDriver
from acceld.formats.zstdchunked.reader import ZstdChunkedReader, tree_from_readers

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT = "io.github.containers.zstd-chunked.tarsplit-position"
NYDUS_TARS = sorted((FIXTURES / "nydus").glob("*.tar"))


def _source_layer(tar: Path) -> SourceLayer:
    digest = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    return SourceLayer(
        digest=digest, media_type="application/vnd.oci.image.layer.v1.tar", size=0, diff_id=digest
    )


def convert(tar: Path, out_dir: Path, driver: ZstdChunkedDriver | None = None) -> tuple[Path, LayerOutput]:
    driver = driver or ZstdChunkedDriver()
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    blob = out_dir / (tar.name + ".zst")
    with tar.open("rb") as source, blob.open("wb") as out:
        output = driver.convert_layer(source, out, _source_layer(tar), work)
    assert list(work.iterdir()) == [], "the writer leaves no spool files behind"
    return blob, output


def _edge_estargz_without_duplicate(tmp_path: Path) -> Path:
    """The eStargz fixture input minus the first of its two `a/x.txt` entries (bytes cut out raw)."""
    data = gzip.decompress((FIXTURES / "estargz" / "edge.tar.gz").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        first = next(m for m in archive.getmembers() if m.name == "a/x.txt")
        end = first.offset_data + -(-first.size // 512) * 512
    path = tmp_path / "edge-dedup.tar"
    path.write_bytes(data[: first.offset] + data[end:])
    return path


def _test_tars(tmp_path: Path) -> list[Path]:
    return [
        write_edge_lower(tmp_path / "lower.tar"),
        write_edge_upper(tmp_path / "upper.tar"),
        write_edge_lower(tmp_path / "lower-64k.tar", chunk_size=64 << 10),
        _edge_estargz_without_duplicate(tmp_path),
        *NYDUS_TARS,
    ]


def _metadata(blob: bytes, annotations: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """TOC and tar-split lines, located by the annotations and checked against the raw footer."""
    toc_offset, toc_len, toc_size, kind = map(int, annotations[POSITION].split(":"))
    ts_offset, ts_len, ts_size = map(int, annotations[TARSPLIT].split(":"))
    assert kind == 1
    footer_frame = blob[-72:]
    assert footer_frame[:8] == b"\x50\x2a\x4d\x18\x40\x00\x00\x00"
    assert footer_frame[-8:] == b"GNUlInUx"
    assert struct.unpack("<7Q", footer_frame[8:64]) == (
        toc_offset,
        toc_len,
        toc_size,
        1,
        ts_offset,
        ts_len,
        ts_size,
    )
    for offset, length in ((toc_offset, toc_len), (ts_offset, ts_len)):
        assert blob[offset - 8 : offset] == b"\x50\x2a\x4d\x18" + struct.pack("<I", length)
    assert ts_offset + ts_len + 72 == len(blob)
    compressed_toc = blob[toc_offset : toc_offset + toc_len]
    assert annotations[CHECKSUM] == "sha256:" + hashlib.sha256(compressed_toc).hexdigest()
    toc_json = zstandard.ZstdDecompressor().decompress(compressed_toc)
    assert len(toc_json) == toc_size
    toc = json.loads(toc_json)
    compressed_ts = blob[ts_offset : ts_offset + ts_len]
    assert toc["tarSplitDigest"] == "sha256:" + hashlib.sha256(compressed_ts).hexdigest()
    tar_split = zstandard.ZstdDecompressor().decompressobj().decompress(compressed_ts)
    assert len(tar_split) == ts_size
    return toc, [json.loads(line) for line in tar_split.splitlines()]


def test_every_test_tar_round_trips(tmp_path: Path) -> None:
    for tar in _test_tars(tmp_path):
        blob, output = convert(tar, tmp_path / "out")
        source = tar.read_bytes()
        assert output.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert output.diff_id == "sha256:" + hashlib.sha256(source).hexdigest()
        decompressed = subprocess.run(["zstd", "-dc", str(blob)], check=True, capture_output=True).stdout
        assert decompressed == source, f"{tar.name}: zstd -dc differs from the source tar"
        frames = subprocess.run(["zstd", "-lv", str(blob)], check=True, capture_output=True, text=True).stdout
        assert "# Skippable Frames: 3" in frames, frames

        toc, tar_split = _metadata(blob.read_bytes(), dict(output.annotations))
        with tarfile.open(tar) as archive:
            members = archive.getmembers()
        toc_files = [e for e in toc["entries"] if e["type"] != "chunk"]
        split_files = [line for line in tar_split if line["type"] == 1]
        assert [e["name"].rstrip("/") for e in toc_files] == [m.name for m in members], tar.name
        assert [line.get("name", "").rstrip("/") for line in split_files] == [m.name for m in members]
        for entry, line, member in zip(toc_files, split_files, members, strict=True):
            assert entry.get("size", 0) == line.get("size", 0) == member.size
            assert entry.get("mode", 0) == member.mode
            if member.isreg() and member.size:
                with tarfile.open(tar) as archive:
                    content = archive.extractfile(member.name)
                    assert content is not None
                    assert entry["digest"] == "sha256:" + hashlib.sha256(content.read()).hexdigest()

        reader = ZstdChunkedReader(blob, dict(output.annotations))
        with tar.open("rb") as source_stream:
            report = reader.verify(source_stream, diff_id=output.diff_id)
        assert report.tar_size == len(source)
        with tar.open("rb") as source_stream:
            assert diff_trees(tree_from_layers([source_stream]), reader.to_fstree()) == []


def test_chunk_layout_follows_the_containers_storage_rules(tmp_path: Path) -> None:
    rng_block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB of incompressible-looking data
    content = rng_block * 8 + bytes(5000) + rng_block + bytes(1000) + b"tail"
    tar = tmp_path / "chunks.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("big")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
        archive.addfile(tarfile.TarInfo("empty"))
    blob, output = convert(tar, tmp_path)
    data = blob.read_bytes()
    toc, _ = _metadata(data, dict(output.annotations))
    big = [e for e in toc["entries"] if e["name"] == "big"]
    assert big[0]["type"] == "reg" and all(e["type"] == "chunk" for e in big[1:])
    assert len(big) > 2, "a 1 MiB file has several rolling-checksum chunks"
    assert sum(e["chunkSize"] for e in big) == len(content)
    zeros = [e for e in big if e.get("chunkType") == "zeros"]
    assert [(e.get("chunkOffset", 0), e["chunkSize"]) for e in zeros] == [(8 * len(rng_block), 5000)], (
        "only the run of at least 1024 zeros is a zeros chunk"
    )
    position = 0
    for index, entry in enumerate(big):
        assert entry.get("chunkOffset", 0) == position
        end = big[index + 1]["offset"] if index + 1 < len(big) else big[0]["endOffset"]
        chunk = zstandard.ZstdDecompressor().decompressobj().decompress(data[entry["offset"] : end])
        assert chunk == content[position : position + entry["chunkSize"]]
        assert entry["chunkDigest"] == "sha256:" + hashlib.sha256(chunk).hexdigest()
        position += entry["chunkSize"]
    empty = next(e for e in toc["entries"] if e["name"] == "empty")
    assert "offset" not in empty and "digest" not in empty


def test_huge_chunks_are_streamed(tmp_path: Path) -> None:
    """A 24 MiB zeros chunk and a 12 MiB data chunk (a period-3 pattern never triggers a split)
    each become a single frame, compressed incrementally rather than buffered."""
    content = b"head" + bytes(24 << 20) + b"abc" * (4 << 20) + b"end"
    tar = tmp_path / "huge.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("huge")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    blob, output = convert(tar, tmp_path)
    reader = ZstdChunkedReader(blob, dict(output.annotations))
    chunks = [(e.get("chunkType", ""), e["chunkSize"]) for e in reader.entries]
    assert chunks == [("", 4), ("zeros", 24 << 20), ("", 3 * (4 << 20) + 3)]
    with tar.open("rb") as source:
        report = reader.verify(source, output.diff_id)
    assert report.frames == 5  # header, 3 chunks, trailer
    assert blob.stat().st_size < 100_000


def test_two_layers_give_the_source_tree(tmp_path: Path) -> None:
    lower, upper = write_edge_lower(tmp_path / "lower.tar"), write_edge_upper(tmp_path / "upper.tar")
    readers = []
    for tar in (lower, upper):
        blob, output = convert(tar, tmp_path / tar.stem)
        readers.append(ZstdChunkedReader(blob, dict(output.annotations)))
    with lower.open("rb") as a, upper.open("rb") as b:
        expected = tree_from_layers([a, b])
    assert diff_trees(expected, tree_from_readers(readers)) == []
    assert "/whiteout-me" not in expected and "/opaque/upper-only" in expected


def test_output_does_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    tar = write_edge_lower(tmp_path / "lower.tar", chunk_size=64 << 10)
    one, _ = convert(tar, tmp_path / "one", ZstdChunkedDriver(workers=1))
    two, _ = convert(tar, tmp_path / "two", ZstdChunkedDriver(workers=2))
    assert one.read_bytes() == two.read_bytes()


def _text(size: int, seed: bytes) -> bytes:
    """Compressible, varied bytes (words from a hash stream), so that zstd levels differ on them."""
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", b"eta", b"theta", b"\n"]
    out = bytearray()
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += b" ".join(words[byte % len(words)] + str(byte).encode() for byte in block) + b" "
    return bytes(out[:size])


@pytest.mark.parametrize("level", [None, 3])
def test_frame_levels_by_size(tmp_path: Path, level: int | None) -> None:
    """The default compresses frames of at most 16 KiB at level 5, of at most 64 KiB at 6, larger
    ones at 7; a given level applies to every frame. Each file here is one chunk, one frame."""
    files = {"small": _text(12 << 10, b"s"), "medium": _text(40 << 10, b"m"), "large": _text(100 << 10, b"l")}
    expected = {"small": 5, "medium": 6, "large": 7} if level is None else dict.fromkeys(files, level)
    tar = tmp_path / "levels.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    blob, output = convert(tar, tmp_path, ZstdChunkedDriver(compression_level=level))
    data = blob.read_bytes()
    toc, _ = _metadata(data, dict(output.annotations))
    for entry in toc["entries"]:
        content = files[entry["name"]]
        frames = {n: zstandard.ZstdCompressor(level=n).compress(content) for n in (3, 5, 6, 7)}
        assert len(set(frames.values())) == 4, "the levels must give different frames here"
        assert data[entry["offset"] : entry["endOffset"]] == frames[expected[entry["name"]]], entry["name"]


def test_gnu_format_and_zeros_after_the_end_marker(tmp_path: Path) -> None:
    tar = tmp_path / "gnu.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("gnu/" + "l" * 150)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("gnu/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/" + "t" * 120
        archive.addfile(link)
    tar.write_bytes(tar.read_bytes() + bytes(3000))
    blob, output = convert(tar, tmp_path)
    assert (
        subprocess.run(["zstd", "-dc", str(blob)], check=True, capture_output=True).stdout == tar.read_bytes()
    )
    reader = ZstdChunkedReader(blob, dict(output.annotations))
    with tar.open("rb") as source:
        reader.verify(source, output.diff_id)
    names = [e["name"] for e in reader.entries]
    assert names == ["gnu/" + "l" * 150, "gnu/link"]
    assert reader.entries[1]["linkName"] == "/" + "t" * 120

    junk = tmp_path / "junk.tar"
    junk.write_bytes(tar.read_bytes() + b"junk after the archive")
    with pytest.raises(FormatError, match="after its end-of-archive marker"):
        convert(junk, tmp_path)


def test_header_fields_as_go_reads_them(tmp_path: Path) -> None:
    """Base-256 numbers (GNU), PAX times with fractions and a PAX size/uid override."""
    gnu = tmp_path / "gnu-big.tar"
    with tarfile.open(gnu, "w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("big-ids")
        info.uid, info.gid, info.mtime = 1 << 22, (1 << 33) + 5, 1_700_000_000
        archive.addfile(info)
    pax = tmp_path / "pax-times.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("times")
        info.pax_headers = {"mtime": "1700000000.123456789", "atime": "1700000001.5", "ctime": "-1.25"}
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    entries = {}
    for tar in (gnu, pax):
        blob, output = convert(tar, tmp_path / tar.stem)
        reader = ZstdChunkedReader(blob, dict(output.annotations))  # checks the TOC against tarfile
        with tar.open("rb") as source:
            reader.verify(source, output.diff_id)
        entries.update({e["name"]: e for e in reader.entries})
    assert (entries["big-ids"]["uid"], entries["big-ids"]["gid"]) == (1 << 22, (1 << 33) + 5)
    times = entries["times"]
    assert times["modtime"] == "2023-11-14T22:13:20.123456789Z"
    assert times["accesstime"] == "2023-11-14T22:13:21.5Z"
    assert times["changetime"] == "1969-12-31T23:59:58.75Z"


def test_duplicate_paths_are_refused_like_tar_split_does(tmp_path: Path) -> None:
    tar = tmp_path / "edge.tar"
    tar.write_bytes(gzip.decompress((FIXTURES / "estargz" / "edge.tar.gz").read_bytes()))
    with pytest.raises(FormatError, match=r"two entries for 'a/x\.txt'"):
        convert(tar, tmp_path)
    assert list((tmp_path / "work").iterdir()) == [], "a failed conversion leaves no spool files"
    dotted = tmp_path / "dotted.tar"
    with tarfile.open(dotted, "w") as archive:
        archive.addfile(tarfile.TarInfo("./a"))
        archive.addfile(tarfile.TarInfo("a"))
    with pytest.raises(FormatError, match="two entries"):
        convert(dotted, tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a tar file" * 100, "chksum"),
        (b"x" * 148 + b"0000000\0" + b"x" * 356, "checksum"),
        (b"\0" * 512 + b"x" * 512, "after a zero block"),
    ],
)
def test_bad_input_is_a_one_line_format_error(tmp_path: Path, content: bytes, message: str) -> None:
    tar = tmp_path / "bad.tar"
    tar.write_bytes(content)
    with pytest.raises(FormatError, match=message) as caught:
        convert(tar, tmp_path)
    assert "\n" not in str(caught.value)


def test_truncated_tar_is_refused(tmp_path: Path) -> None:
    source = write_edge_upper(tmp_path / "upper.tar").read_bytes()
    tar = tmp_path / "cut.tar"
    tar.write_bytes(source[:2000])
    with pytest.raises(FormatError, match="truncated"):
        convert(tar, tmp_path)


def test_sparse_and_unknown_entry_types_are_refused(tmp_path: Path) -> None:
    tar = tmp_path / "contiguous.tar"
    with tarfile.open(tar, "w") as archive:
        info = tarfile.TarInfo("c")
        info.type = tarfile.CONTTYPE
        archive.addfile(info)
    with pytest.raises(FormatError, match="cannot represent"):
        convert(tar, tmp_path)


def test_reader_detects_corruption(tmp_path: Path) -> None:
    tar = write_edge_lower(tmp_path / "lower.tar", chunk_size=64 << 10)
    blob, output = convert(tar, tmp_path)
    annotations = dict(output.annotations)
    reader = ZstdChunkedReader(blob, annotations)
    chunk = next(e for e in reader.entries if e["type"] == "chunk")

    damaged = tmp_path / "damaged.zst"
    data = bytearray(blob.read_bytes())
    data[chunk["offset"] + 20] ^= 0xFF
    damaged.write_bytes(data)
    with pytest.raises(FormatError):
        ZstdChunkedReader(damaged, annotations).verify()

    wrong = dict(annotations, **{CHECKSUM: "sha256:" + "0" * 64})
    with pytest.raises(FormatError, match="manifest-checksum"):
        ZstdChunkedReader(blob, wrong)
    with pytest.raises(FormatError, match="tarsplit-position missing"):
        ZstdChunkedReader(blob, {k: v for k, v in annotations.items() if k != TARSPLIT})
    with tar.open("rb") as source, pytest.raises(FormatError, match="diff_id"):
        reader.verify(source, diff_id="sha256:" + "1" * 64)


def test_reader_refuses_a_toc_that_disagrees_with_the_tar_split(tmp_path: Path) -> None:
    tar = write_edge_upper(tmp_path / "upper.tar")
    blob, output = convert(tar, tmp_path)
    data = blob.read_bytes()
    toc, _ = _metadata(data, dict(output.annotations))
    toc["entries"][-1]["mode"] = 0o777
    forged, annotations = _replace_toc(data, dict(output.annotations), json.dumps(toc).encode(), tmp_path)
    with pytest.raises(FormatError, match="disagree on mode"):
        ZstdChunkedReader(forged, annotations)
    toc["entries"].append(5)
    forged, annotations = _replace_toc(data, dict(output.annotations), json.dumps(toc).encode(), tmp_path)
    with pytest.raises(FormatError, match="malformed TOC"):
        ZstdChunkedReader(forged, annotations)


def _replace_toc(
    blob: bytes, annotations: dict[str, str], toc: bytes, tmp_path: Path
) -> tuple[Path, dict[str, str]]:
    """Rebuild the blob around a different TOC (consistent footer and annotations)."""
    toc_offset, _, _, _ = map(int, annotations[POSITION].split(":"))
    ts_offset, ts_len, ts_size = map(int, annotations[TARSPLIT].split(":"))
    compressed = zstandard.ZstdCompressor().compress(toc)
    tar_split = blob[ts_offset : ts_offset + ts_len]
    new_ts_offset = toc_offset + len(compressed) + 8
    footer = struct.pack("<7Q", toc_offset, len(compressed), len(toc), 1, new_ts_offset, ts_len, ts_size)
    skippable = b"\x50\x2a\x4d\x18"
    out = (
        blob[: toc_offset - 8]
        + skippable
        + struct.pack("<I", len(compressed))
        + compressed
        + skippable
        + struct.pack("<I", ts_len)
        + tar_split
        + skippable
        + struct.pack("<I", 64)
        + footer
        + b"GNUlInUx"
    )
    target = tmp_path / "forged.zst"
    target.write_bytes(out)
    return target, {
        CHECKSUM: "sha256:" + hashlib.sha256(compressed).hexdigest(),
        POSITION: f"{toc_offset}:{len(compressed)}:{len(toc)}:1",
        TARSPLIT: f"{new_ts_offset}:{ts_len}:{ts_size}",
    }


def test_driver_contract() -> None:
    driver = ZstdChunkedDriver()
    assert (driver.name, driver.tag_suffix, driver.compression_level) == ("zstdchunked", "-zstdchunked", None)
    assert driver.options_key() == ZstdChunkedDriver(workers=1).options_key()
    assert driver.options_key() != ZstdChunkedDriver(compression_level=7).options_key()
    assert driver.options_key() != ZstdChunkedDriver(compression_level=10).options_key()
    converted = SourceLayer(
        "sha256:x",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        1,
        "sha256:y",
        {CHECKSUM: "sha256:a", POSITION: "1:2:3:1", TARSPLIT: "4:5:6"},
    )
    assert driver.is_converted(converted)
    assert not driver.is_converted(
        SourceLayer("sha256:x", "application/vnd.oci.image.layer.v1.tar+gzip", 1, "y")
    )
    assert driver.finalize([], Path("/nonexistent")).extra_layers == ()
    with pytest.raises(FormatError):
        ZstdChunkedDriver(compression_level=0)
    import pickle

    assert pickle.loads(pickle.dumps(driver)) == driver


def test_legacy_stargz_snapshotter_variant_is_told_apart(tmp_path: Path) -> None:
    """edge.zstdchunked (stargz-snapshotter's old variant) shares zstd frames and skippable frames but
    has a 40-byte footer, io.containers.* keys and an eStargz TOC; ours must not be mistaken for it."""
    legacy = FIXTURES / "estargz" / "edge.zstdchunked"
    legacy_annotations = {
        "io.containers.zstd-chunked.manifest-checksum": (
            "sha256:4e72c595c4bcfc718f199c737af64157c67982921a993fa9c39f8f9b3d6cbcf0"
        ),
        "io.containers.zstd-chunked.manifest-position": "5361:1108:4381:1",
        "containerd.io/snapshot/stargz/toc.digest": (
            "sha256:d70ec8496f74f150e6e2be04859e7689d6d5faa87b0fae4b50d42d5f2446064f"
        ),
    }
    driver = ZstdChunkedDriver()
    layer = SourceLayer("sha256:x", "application/vnd.oci.image.layer.v1.tar+zstd", 1, "y", legacy_annotations)
    assert not driver.is_converted(layer), "legacy layers are converted again"
    with pytest.raises(FormatError, match="legacy"):
        ZstdChunkedReader(legacy)
    with pytest.raises(FormatError, match="legacy"):
        ZstdChunkedReader(legacy, legacy_annotations)

    ours, output = convert(_edge_estargz_without_duplicate(tmp_path), tmp_path)
    reader = ZstdChunkedReader(ours, dict(output.annotations))
    legacy_toc = json.loads((FIXTURES / "estargz" / "edge.zstdchunked.toc.json").read_bytes())
    legacy_digests = {
        e["name"]: e["digest"] for e in legacy_toc["entries"] if e["type"] == "reg" and e.get("digest")
    }
    our_digests = {e["name"]: e["digest"] for e in reader.entries if e["type"] == "reg" and e.get("digest")}
    common = set(legacy_digests) & set(our_digests) - {"a/x.txt"}
    assert len(common) >= 5
    assert {n: our_digests[n] for n in common} == {n: legacy_digests[n] for n in common}
    legacy_stream = subprocess.run(["zstd", "-dc", str(legacy)], check=True, capture_output=True).stdout
    assert hashlib.sha256(legacy_stream).hexdigest() == (
        "6639820cdf7ed3fd1b89c3f906b62012947edcaac60c6efbcaf92ae82d6f6d3f"
    ), "the real zstd CLI reads the legacy blob too (skippable frames)"


def test_xattrs_are_base64_in_the_toc(tmp_path: Path) -> None:
    blob, output = convert(write_edge_lower(tmp_path / "lower.tar", chunk_size=64 << 10), tmp_path)
    toc, _ = _metadata(blob.read_bytes(), dict(output.annotations))
    entry = next(e for e in toc["entries"] if e["name"] == "xattrs/file")
    assert {k: base64.b64decode(v) for k, v in entry["xattrs"].items()} == {
        "user.foo": b"bar",
        "user.bin": b"\x00\x01\xfe",
    }
    empty = next(e for e in toc["entries"] if e["name"] == "xattrs/empty-value")
    assert empty["xattrs"] == {"user.empty": ""}


def test_reference_decoder_integrity_check_accepts_the_blob(tmp_path: Path) -> None:
    blob, _ = convert(write_edge_upper(tmp_path / "upper.tar"), tmp_path)
    subprocess.run(["zstd", "-tq", str(blob)], check=True)
