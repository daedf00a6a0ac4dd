"""eStargz writer and driver against the Go reference (`esgz build`, `esgz verify`) and the source tree."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from harness.tars import MTIME, write_edge_lower, write_edge_upper
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acceld.formats.driver import FormatError, SourceLayer
from acceld.formats.estargz.annotations import TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION
from acceld.formats.estargz.driver import LAYER_MEDIA_TYPE, EstargzDriver
from acceld.formats.estargz.order import clean_name
from acceld.formats.estargz.reader import tree_from_estargz_layers
from acceld.formats.estargz.writer import WriterOptions, write_estargz
from acceld.formats.fstree import FsTree, diff_trees, tree_from_layers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "estargz"
ESGZ_BUILD_SCRIPT = SHARED / "tools" / "esgz" / "build.sh"
ESGZ_BINARY = ROOT / ".cache" / "esgz" / "esgz"
HIDDEN_NAMES = ("/.no.prefetch.landmark", "/.prefetch.landmark", "/stargz.index.json")
SMALL_CHUNK = 64 << 10


@pytest.fixture(scope="session")
def esgz() -> Path:
    """The Go reference tool, built once into .cache/esgz from Debian packages."""
    if not ESGZ_BINARY.exists():
        built = subprocess.run([str(ESGZ_BUILD_SCRIPT), str(ESGZ_BINARY)], capture_output=True, text=True)
        if built.returncode != 0:
            if shutil.which("go") is None:
                pytest.skip(f"Go toolchain is not installable here: {built.stderr.strip()[-300:]}")
            pytest.fail(f"building esgz failed: {built.stderr.strip()[-1000:]}")
    return ESGZ_BINARY


def esgz_build(
    esgz: Path, source: Path, target: Path, chunk_size: int = 0, prefetch: Sequence[str] = ()
) -> None:
    args = [str(esgz), "build", str(source), str(target), str(chunk_size), "gzip"]
    if prefetch:
        args.append(",".join(prefetch))
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, "GOMAXPROCS": "1"})


def esgz_verify(esgz: Path, blob: Path, toc_digest: str) -> str:
    result = subprocess.run([str(esgz), "verify", str(blob), toc_digest], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def esgz_toc(esgz: Path, blob: Path) -> bytes:
    return subprocess.run([str(esgz), "toc", str(blob)], check=True, capture_output=True).stdout


def stripped_entries(toc_json: bytes) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(toc_json)["entries"]
    for entry in entries:
        entry.pop("offset", None)
        entry.pop("innerOffset", None)
    return entries


def convert(source: Path, target: Path, **options: Any) -> dict[str, Any]:
    """Run the driver like the pipeline does; returns its LayerOutput fields.

    Names that are not UTF-8 are kept as the reference writer keeps them, to compare like for like
    (the pipeline's default refuses them: tests/test_odd_layers.py).
    """
    driver = EstargzDriver(**{"utf8_names": False, **options})
    layer = SourceLayer(
        digest="sha256:" + "0" * 64,
        media_type="application/vnd.oci.image.layer.v1.tar",
        size=source.stat().st_size,
        diff_id="sha256:" + "0" * 64,
    )
    with source.open("rb") as tar, target.open("wb") as out:
        output = driver.convert_layer(tar, out, layer, target.parent)
    return {"media_type": output.media_type, "diff_id": output.diff_id, **output.annotations}


def decompressed(blob: Path) -> bytes:
    with gzip.open(blob) as stream:
        return stream.read()


def converted_tree(blobs: Sequence[Path]) -> FsTree:
    """The tree a runtime unpacking the converted layers sees, minus the entries readers hide."""
    tree = tree_from_layers([io.BytesIO(decompressed(blob)) for blob in blobs])
    for hidden in HIDDEN_NAMES:
        tree.remove(hidden)
    return tree


def source_tree(tars: Sequence[Path]) -> FsTree:
    return tree_from_layers(
        [io.BytesIO(gzip.decompress(t.read_bytes()) if t.suffix == ".gz" else t.read_bytes()) for t in tars]
    )


# --- odd tars the harness does not cover: naming formats, escapes, old type flags -----------------------


def _add(archive: tarfile.TarFile, name: str, data: bytes = b"", **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    for key, value in fields.items():
        setattr(info, key, value)
    if info.type == tarfile.REGTYPE:
        info.size = len(data)
    archive.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def write_odd_names(path: Path) -> Path:
    """PAX names that exercise every JSON escape, including invalid UTF-8."""
    with tarfile.open(
        path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as archive:
        _add(archive, "odd/", type=tarfile.DIRTYPE, mode=0o755)
        for name in (
            "ctl\x01\x08\x0c\x1f\x7f",
            "tab\tnl\nret\r",
            'quote"back\\slash',
            "<&>",
            "sep\u2028\u2029",
            "bad-utf8-\udcff\udcfe-end",
            "trunc-\udce2\udc82-seq",
            "emoji-🦀",
        ):
            _add(
                archive,
                f"odd/{name}",
                data=name.encode("utf-8", "surrogateescape"),
                uname="u\x01<",
                gname="g&",
            )
        _add(archive, "odd/frac-time", data=b"t", mtime=MTIME + 0.5)
        _add(archive, "odd/before-epoch", data=b"t", mtime=-100)
        _add(archive, "odd/epoch", data=b"t", mtime=0.75)
    return path


def write_gnu_and_ustar(path: Path) -> Path:
    """GNU long names/links, base-256 ids, a USTAR prefix, and a regular file with the old `\\0` type flag."""
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "g/", type=tarfile.DIRTYPE, mode=0o755)
        _add(
            archive, "g/" + "long-" * 30, data=b"gnu long name", uid=0o10000000, gid=3, uname="big", gname="g"
        )
        _add(archive, "g/link", type=tarfile.SYMTYPE, linkname="t/" * 70, mode=0o777)
        _add(archive, "g/hard", type=tarfile.LNKTYPE, linkname="g/" + "long-" * 30)
    ustar = io.BytesIO()
    with tarfile.open(fileobj=ustar, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        _add(archive, "u/" + "p" * 90 + "/" + "n" * 90, data=b"split into prefix and name", mode=0o640)
        _add(archive, "u/oldtype", data=b"regular with type NUL", mode=0o644)
        _add(archive, "u/olddir/", data=b"", mode=0o755)
    members = bytearray(ustar.getvalue())
    for offset in range(0, len(members), 512):  # turn the two "u/old*" headers into old-style type '\0'
        if members[offset : offset + 5] == b"u/old":
            members[offset + 156] = 0
            members[offset + 148 : offset + 156] = b" " * 8
            members[offset + 148 : offset + 156] = b"%06o\0 " % sum(members[offset : offset + 512])
    gnu_body = gnu.getvalue()
    gnu_body = gnu_body[: gnu_body.rfind(b"g/hard") // 512 * 512 + 512]  # drop GNU's end-of-archive blocks
    path.write_bytes(gnu_body + bytes(members))
    return path


def write_duplicates(path: Path) -> Path:
    """Duplicate names (the later replaces the earlier at its own position) and pre-existing landmarks."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, ".no.prefetch.landmark", data=b"\x0f")
        _add(archive, "d/", type=tarfile.DIRTYPE, mode=0o755)
        _add(archive, "d/a", data=b"first")
        _add(archive, "d/b", data=b"b")
        _add(archive, "./d/a", data=b"second", mode=0o600)
        _add(archive, "d/c", type=tarfile.LNKTYPE, linkname="d/b")
        _add(archive, "stargz.index.json", data=b"{}")
    return path


def write_empty(path: Path) -> Path:
    with tarfile.open(path, "w"):
        pass
    return path


# --- comparisons with the reference ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("estargz-layers")
    fixture = root / "edge.tar.gz"
    shutil.copy(FIXTURES / "edge.tar.gz", fixture)
    return {
        "fixture": fixture,
        "lower": write_edge_lower(root / "lower.tar"),
        "lower-small-chunks": write_edge_lower(root / "lower-small.tar", chunk_size=SMALL_CHUNK),
        "upper": write_edge_upper(root / "upper.tar"),
        "odd-names": write_odd_names(root / "odd.tar"),
        "gnu-ustar": write_gnu_and_ustar(root / "gnu-ustar.tar"),
        "duplicates": write_duplicates(root / "duplicates.tar"),
        "empty": write_empty(root / "empty.tar"),
    }


VARIANTS = {
    "default": {},
    "small-chunks": {"chunk_size": SMALL_CHUNK},
    "min-chunk": {"min_chunk_size": 50_000},
    "min-chunk-small": {"min_chunk_size": 50_000, "chunk_size": SMALL_CHUNK},
    "level-1": {"compression_level": 1},
}
PREFETCH = {
    "fixture": ["a/hl", "/a/fifo", "a/nonexist", "./a/multi"],
    "lower": ["/links/hardlink-other-dir", "data/multi-chunk", "missing/file", "dev/null"],
    "lower-small-chunks": ["deep", "data/exact-chunk"],
    "upper": ["opaque/upper-only", "etc/hostname"],
    "duplicates": ["d/c", "d/a"],
    "gnu-ustar": ["u/oldtype", "g/hard", "/g/link"],  # u/ has no directory entry: Go reports u/oldtype missed
}


def check_against_reference(
    esgz: Path, source: Path, tmp_path: Path, prefetch: Sequence[str] = (), **options: Any
) -> bytes:
    ours, reference = tmp_path / "ours.esgz", tmp_path / "reference.esgz"
    output = convert(source, ours, prefetch_files=list(prefetch), **options)
    toc_digest = output[TOC_DIGEST_ANNOTATION]
    esgz_verify(esgz, ours, toc_digest)
    toc = esgz_toc(esgz, ours)
    assert "sha256:" + hashlib.sha256(toc).hexdigest() == toc_digest
    esgz_build(esgz, source, reference, options.get("chunk_size", 0), prefetch)
    assert stripped_entries(toc) == stripped_entries(esgz_toc(esgz, reference))
    content = decompressed(ours)
    assert output["diff_id"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert output[UNCOMPRESSED_SIZE_ANNOTATION] == str(len(content))
    assert output["media_type"] == LAYER_MEDIA_TYPE
    return toc


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize(
    "layer", ["fixture", "lower", "upper", "odd-names", "gnu-ustar", "duplicates", "empty"]
)
def test_toc_matches_reference(
    esgz: Path, layers: dict[str, Path], tmp_path: Path, layer: str, variant: str
) -> None:
    check_against_reference(esgz, layers[layer], tmp_path, **VARIANTS[variant])


@pytest.mark.parametrize("layer", sorted(PREFETCH))
def test_prefetch_order_matches_reference(
    esgz: Path, layers: dict[str, Path], tmp_path: Path, layer: str
) -> None:
    chunk = SMALL_CHUNK if layer == "lower-small-chunks" else 0
    options = {"chunk_size": chunk} if chunk else {}
    toc = check_against_reference(esgz, layers[layer], tmp_path, prefetch=PREFETCH[layer], **options)
    names = [entry["name"] for entry in json.loads(toc)["entries"]]
    assert ".prefetch.landmark" in names and ".no.prefetch.landmark" not in names


def test_prefetch_with_min_chunk_matches_reference(
    esgz: Path, layers: dict[str, Path], tmp_path: Path
) -> None:
    check_against_reference(
        esgz, layers["fixture"], tmp_path, prefetch=PREFETCH["fixture"], min_chunk_size=50_000
    )


def test_toc_bytes_equal_reference_apart_from_offsets(
    esgz: Path, layers: dict[str, Path], tmp_path: Path
) -> None:
    """Key order, omissions, indentation and every string escape are byte-identical to Go's TOC."""
    for name in ("fixture", "odd-names", "gnu-ustar", "lower"):
        ours = check_against_reference(esgz, layers[name], tmp_path)
        reference = esgz_toc(esgz, tmp_path / "reference.esgz")
        zero_offsets = re.compile(rb'"offset": \d+')
        assert zero_offsets.sub(b'"offset": 0', ours) == zero_offsets.sub(b'"offset": 0', reference), name


def test_fixture_toc_equals_stored_reference(layers: dict[str, Path], tmp_path: Path) -> None:
    """Without Go at all: the stored reference TOCs (default and minChunkSize 50000 from ctr-remote)."""
    for stored, options in (
        ("edge.esgz.toc.json", {}),
        ("edge-minchunk50000.esgz.toc.json", {"min_chunk_size": 50000}),
    ):
        blob = tmp_path / "ours.esgz"
        output = convert(layers["fixture"], blob, **options)
        data = blob.read_bytes()
        toc_offset = int(data[-51:][16:32], 16)
        with gzip.GzipFile(fileobj=io.BytesIO(data[toc_offset:-51])) as member:
            toc_tar = member.read()
        size = int(toc_tar[124:135], 8)
        toc = toc_tar[512 : 512 + size]
        assert "sha256:" + hashlib.sha256(toc).hexdigest() == output[TOC_DIGEST_ANNOTATION]
        reference = (FIXTURES / stored).read_bytes()
        assert stripped_entries(toc) == stripped_entries(reference)
        assert output[UNCOMPRESSED_SIZE_ANNOTATION] == "8410624"


def test_member_layout_matches_reference(esgz: Path, layers: dict[str, Path], tmp_path: Path) -> None:
    """Members start where Go's do: the same entries carry offsets, each one a distinct member start."""
    toc = json.loads(
        check_against_reference(esgz, layers["lower-small-chunks"], tmp_path, chunk_size=SMALL_CHUNK)
    )
    reference = json.loads(esgz_toc(esgz, tmp_path / "reference.esgz"))
    ours_offsets = [e.get("offset") for e in toc["entries"]]
    ref_offsets = [e.get("offset") for e in reference["entries"]]
    assert [o is None for o in ours_offsets] == [o is None for o in ref_offsets]
    data_offsets = [o for o in ours_offsets if o is not None]
    assert data_offsets == sorted(set(data_offsets))
    blob = (tmp_path / "ours.esgz").read_bytes()
    for offset in data_offsets:  # each recorded offset is the start of a gzip member
        assert blob[offset : offset + 3] == b"\x1f\x8b\x08"
        assert gzip.GzipFile(fileobj=io.BytesIO(blob[offset:])).read(1) is not None


def test_footer_is_canonical(layers: dict[str, Path], tmp_path: Path) -> None:
    blob = tmp_path / "ours.esgz"
    convert(layers["fixture"], blob)
    data = blob.read_bytes()
    toc_offset = int(data[-51:][16:32], 16)
    expected = (
        bytes.fromhex("1f8b08040000000000ff1a00534716 00".replace(" ", ""))
        + b"%016xSTARGZ" % toc_offset
        + bytes.fromhex("010000ffff")
        + bytes(8)
    )
    assert data[-51:] == expected
    assert data[toc_offset : toc_offset + 3] == b"\x1f\x8b\x08"


# --- the filesystem survives -----------------------------------------------------------------------------


def test_filesystem_of_converted_layers_equals_source(layers: dict[str, Path], tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower.esgz", tmp_path / "upper.esgz"
    convert(layers["lower"], lower)
    convert(layers["upper"], upper, prefetch_files=["opaque/upper-only"])
    for sources, blobs in (
        ([layers["lower"]], [lower]),
        ([layers["upper"]], [upper]),
        ([layers["lower"], layers["upper"]], [lower, upper]),
    ):
        assert diff_trees(source_tree(sources), converted_tree(blobs)) == []


@pytest.mark.parametrize("layer", ["fixture", "lower-small-chunks", "odd-names", "gnu-ustar", "duplicates"])
def test_filesystem_equals_source_for_odd_layers(layers: dict[str, Path], tmp_path: Path, layer: str) -> None:
    blob = tmp_path / "ours.esgz"
    convert(layers[layer], blob, chunk_size=SMALL_CHUNK, min_chunk_size=0)
    expected = source_tree([layers[layer]])
    for hidden in HIDDEN_NAMES:
        expected.remove(hidden)  # "duplicates" carries an old landmark and TOC, which Go drops too
    assert diff_trees(expected, converted_tree([blob])) == []
    with blob.open("rb") as handle:
        toc_view = tree_from_estargz_layers([handle])
    assert diff_trees(expected, toc_view) == TOC_VIEW_DIFFERENCES.get(layer, [])


# What the TOC cannot say the way the tar does (the reference writer behaves the same): names that
# are not UTF-8 become U+FFFD, and modtime is rounded where tar readers truncate fractional mtimes.
TOC_VIEW_DIFFERENCES = {
    "fixture": ["/a/xattr: mtime 1700000000 != 1700000001"],
    "odd-names": [
        "missing: /odd/bad-utf8-\udcff\udcfe-end",
        "missing: /odd/trunc-\udce2\udc82-seq",
        "unexpected: /odd/bad-utf8-\ufffd\ufffd-end",
        "unexpected: /odd/trunc-\ufffd\ufffd-seq",
        "/odd/frac-time: mtime 1700000000 != 1700000001",
    ],
}


def test_headers_are_copied_unchanged(layers: dict[str, Path], tmp_path: Path) -> None:
    """The decompressed blob is landmark + the source tar's blocks + TOC entry, byte for byte."""
    blob = tmp_path / "ours.esgz"
    convert(layers["lower"], blob)
    content = decompressed(blob)
    source = layers["lower"].read_bytes()
    end_of_entries = len(source.rstrip(b"\0"))
    end_of_entries += -end_of_entries % 512
    assert content[1024 : 1024 + end_of_entries] == source[:end_of_entries]
    assert content[1024 + end_of_entries : 1024 + end_of_entries + 17] == b"stargz.index.json"


def test_output_does_not_depend_on_workers(layers: dict[str, Path], tmp_path: Path) -> None:
    outputs = []
    for workers in (1, 2, 5):
        blob = tmp_path / f"w{workers}.esgz"
        convert(layers["lower-small-chunks"], blob, chunk_size=SMALL_CHUNK, workers=workers)
        outputs.append(blob.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


# --- driver contract ---------------------------------------------------------------------------------------


def test_driver_contract() -> None:
    driver = EstargzDriver(prefetch_files=["a", "b"], workers=3)
    assert driver.name == "estargz" and driver.tag_suffix == "-esgz"
    assert driver.prefetch_files == ("a", "b")
    assert driver.options_key() == EstargzDriver(prefetch_files=("a", "b"), workers=1).options_key()
    assert driver.options_key() != EstargzDriver(prefetch_files=("a",)).options_key()
    assert driver.options_key() != EstargzDriver(chunk_size=1 << 20).options_key()
    import pickle

    assert pickle.loads(pickle.dumps(driver)) == driver
    layer = SourceLayer(
        digest="sha256:" + "1" * 64, media_type=LAYER_MEDIA_TYPE, size=1, diff_id="sha256:" + "2" * 64
    )
    assert not driver.is_converted(layer)
    annotated = SourceLayer(
        layer.digest, layer.media_type, 1, layer.diff_id, {TOC_DIGEST_ANNOTATION: "sha256:x"}
    )
    assert driver.is_converted(annotated)
    assert driver.finalize([], Path("/nonexistent")).extra_layers == ()


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_size": 0},
        {"min_chunk_size": -1},
        {"compression_level": 10},
        {"compression_level": -1},
        {"workers": 0},
    ],
)
def test_bad_options_are_rejected(options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EstargzDriver(**options)


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 7000))  # short reads, like a pipe
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_and_compressed_input(layers: dict[str, Path], tmp_path: Path) -> None:
    raw = layers["lower"].read_bytes()
    results = []
    for data in (
        raw,
        gzip.compress(raw, 1),
        gzip.compress(raw[:300_000], 1) + gzip.compress(raw[300_000:], 1),
    ):
        out = io.BytesIO()
        results.append(write_estargz(_Unseekable(data), out, tmp_path, WriterOptions()))  # type: ignore[arg-type]
    assert results[0] == results[1] == results[2]


# --- bad input ---------------------------------------------------------------------------------------------


def _bad_inputs(lower: bytes) -> dict[str, tuple[bytes, str]]:
    header_of_payload = lower.index(b"data/zeros") // 512 * 512
    corrupt_checksum = bytearray(lower)
    corrupt_checksum[header_of_payload + 130] ^= 0x01  # inside the size field
    compressed = gzip.compress(lower, 1)
    bad_deflate = bytearray(compressed)
    bad_deflate[len(compressed) // 2 : len(compressed) // 2 + 64] = bytes(64)
    garbage_after = compressed + b"not gzip"
    global_header = io.BytesIO()
    # a comment-only global header (`git archive`) is dropped; one with attributes cannot be kept
    with tarfile.open(
        fileobj=global_header, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "7"}
    ) as t:
        _add(t, "f", data=b"x")
    return {
        "truncated payload": (lower[: header_of_payload + 512 + 1000], "truncated tar"),
        "truncated header": (lower[: header_of_payload + 100], "truncated tar"),
        "bad checksum": (bytes(corrupt_checksum), "checksum"),
        "random bytes": (os.urandom(4096), "bad tar"),
        "truncated gzip": (compressed[: len(compressed) // 2], "bad gzip"),
        "corrupt gzip": (bytes(bad_deflate), "bad gzip"),
        "garbage after gzip": (garbage_after, "bad gzip"),
        "corrupt zstd": (b"\x28\xb5\x2f\xfd" + os.urandom(200), "bad zstd"),
        "pax global header": (global_header.getvalue(), "PAX global header with file attributes"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated payload",
        "truncated header",
        "bad checksum",
        "random bytes",
        "truncated gzip",
        "corrupt gzip",
        "garbage after gzip",
        "corrupt zstd",
        "pax global header",
    ],
)
def test_bad_input_raises_format_error(layers: dict[str, Path], tmp_path: Path, case: str) -> None:
    data, message = _bad_inputs(layers["lower"].read_bytes())[case]
    source = tmp_path / "bad.tar"
    source.write_bytes(data)
    with pytest.raises(FormatError, match=re.escape(message)) as raised:
        convert(source, tmp_path / "out.esgz")
    assert "\n" not in str(raised.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("estargz-spool")] == []


def test_missed_prefetch_files_are_reported(layers: dict[str, Path], tmp_path: Path) -> None:
    options = WriterOptions(prefetch_files=("u/oldtype", "g/hard", "nope"))
    with layers["gnu-ustar"].open("rb") as source:
        result = write_estargz(source, io.BytesIO(), tmp_path, options)
    assert result.missed_prefetch_files == ("u/oldtype", "nope")


# --- random layers -----------------------------------------------------------------------------------------

_NAME_PARTS = st.sampled_from(["a", "b", "dir", "ünï", "x y", "<&>", "long" * 30, "."])
_TINY_CHUNK = 1024


@st.composite
def random_layers(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A tar with random names (duplicates too), types and sizes around the chunk size, and a prefetch list.

    Hardlinks live under `links/` and point at names outside it that are regular files at that
    moment, so following a hardlink never leads back to one (Go's builder recurses forever on loops).
    """
    names: list[str] = []
    regular: dict[str, str] = {}  # cleaned name -> name, of the names that are regular files now
    linked: set[str] = set()
    buffer = io.BytesIO()
    file_format = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    with tarfile.open(fileobj=buffer, mode="w", format=file_format) as archive:
        for _ in range(draw(st.integers(1, 12))):
            name = "/".join(draw(st.lists(_NAME_PARTS, min_size=1, max_size=3)))
            kind = draw(st.sampled_from(["reg", "reg", "dir", "symlink", "hardlink", "fifo"]))
            if kind == "hardlink":
                name = "links/" + draw(_NAME_PARTS)
            fields: dict[str, Any] = {
                "mode": draw(st.sampled_from([0o644, 0o4755, 0o1777, 0])),
                "uid": draw(st.sampled_from([0, 1000, 65534])),
            }
            key = clean_name(name)
            if key in linked:
                continue  # hardlink targets stay regular files (esgz verify insists)
            targets = sorted(regular.values())
            regular.pop(key, None)
            if kind == "reg":
                size = draw(
                    st.sampled_from(
                        [0, 1, 511, _TINY_CHUNK - 1, _TINY_CHUNK, _TINY_CHUNK + 1, 3 * _TINY_CHUNK]
                    )
                )
                _add(archive, name, data=bytes([len(names) % 251]) * size, **fields)
                regular[key] = name
            elif kind == "hardlink" and targets:
                target = draw(st.sampled_from(targets))
                linked.add(clean_name(target))
                _add(archive, name, type=tarfile.LNKTYPE, linkname=target, **fields)
            elif kind == "symlink":
                _add(archive, name, type=tarfile.SYMTYPE, linkname="../" + name, **fields)
            elif kind == "fifo":
                _add(archive, name, type=tarfile.FIFOTYPE, **fields)
            else:
                _add(archive, name + "/", type=tarfile.DIRTYPE, **fields)
            names.append(name)
    prefetch = draw(st.lists(st.sampled_from([*names, "not/there", "./" + names[0]]), max_size=3))
    return buffer.getvalue(), prefetch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=random_layers(), min_chunk=st.sampled_from([0, 0, 700]))
def test_random_layers_match_reference(
    esgz: Path, tmp_path: Path, layer: tuple[bytes, list[str]], min_chunk: int
) -> None:
    data, prefetch = layer
    source = tmp_path / "random.tar"
    source.write_bytes(data)
    check_against_reference(
        esgz, source, tmp_path, prefetch=prefetch, chunk_size=_TINY_CHUNK, min_chunk_size=min_chunk
    )


def test_hardlink_loop_in_prefetch_is_a_format_error(tmp_path: Path) -> None:
    source = tmp_path / "loop.tar"
    with tarfile.open(source, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "a", data=b"x")
        _add(archive, "b", type=tarfile.LNKTYPE, linkname="a")
        _add(archive, "a", type=tarfile.LNKTYPE, linkname="b")  # replaces the file: a -> b -> a
    # a -> b -> a is refused while scanning, like any hardlink to a hardlink (esgz verify rejects those)
    with pytest.raises(FormatError, match="itself a hardlink"):
        convert(source, tmp_path / "out.esgz", prefetch_files=["a"])
    with pytest.raises(FormatError, match="itself a hardlink"):
        convert(source, tmp_path / "out.esgz")
