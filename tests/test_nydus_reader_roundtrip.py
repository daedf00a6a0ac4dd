"""Round trip: the lead's edge tars → NydusDriver (writer) → the independent reader.

The reader shares no code with the writer, so a tree or structure mismatch here is a writer bug
(or a reader bug): both sides derive their rules from ../shared/docs/formats/nydus-rafs-v6.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from harness.images import blob_path, read_blob_json
from harness.tars import write_edge_lower, write_edge_upper
from harness.testimages import ImageSet

from acceld.formats.driver import LayerBlob, SourceLayer
from acceld.formats.fstree import FsTree, diff_trees, tree_from_directory, tree_from_layers
from acceld.formats.nydus.driver import NydusDriver
from acceld.formats.nydus.reader import (
    ManifestLayer,
    NydusFormatError,
    RafsImage,
    check_image_layers,
    check_image_metadata,
    open_bootstrap_layer,
)
from acceld.formats.nydus.reader_blob import NydusBlob, expand_blob

CHUNK = 0x10000  # small chunks: many chunks per file, fast


@dataclass
class Converted:
    tars: list[Path]
    blobs: dict[str, Path]  # blob id (hex) → blob file
    bootstrap_layer: Path
    manifest: list[ManifestLayer]  # the converted image's layers, bootstrap last


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def convert(tmp_path: Path, driver: NydusDriver, tars: list[Path]) -> Converted:
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir(parents=True)
    layers: list[LayerBlob] = []
    blobs: dict[str, Path] = {}
    for i, tar in enumerate(tars):
        workdir = tmp_path / f"work{i}"
        workdir.mkdir()
        diff_id = "sha256:" + sha256_file(tar)
        source = SourceLayer(
            digest=diff_id, media_type="application/vnd.oci.image.layer.v1.tar", size=0, diff_id=diff_id
        )
        staging = tmp_path / f"blob{i}"
        with tar.open("rb") as stream, staging.open("wb") as out:
            output = driver.convert_layer(stream, out, source, workdir)
        blob_id = sha256_file(staging)
        path = blob_dir / blob_id
        staging.rename(path)
        blobs[blob_id] = path
        digest = "sha256:" + blob_id
        assert output.diff_id == digest
        layers.append(
            LayerBlob(
                path, output.media_type, digest, path.stat().st_size, output.diff_id, output.annotations
            )
        )
    finalize_dir = tmp_path / "finalize"
    finalize_dir.mkdir()
    additions = driver.finalize(layers, finalize_dir)
    manifest = [
        ManifestLayer(layer.path, layer.media_type, layer.digest, layer.diff_id, layer.annotations)
        for layer in [*layers, *additions.extra_layers]
    ]
    return Converted(tars, blobs, additions.extra_layers[-1].path, manifest)


def expected_tree(tars: list[Path]) -> FsTree:
    handles = [tar.open("rb") for tar in tars]
    try:
        return tree_from_layers(handles)
    finally:
        for handle in handles:
            handle.close()


@pytest.fixture(scope="module")
def edge_tars(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("edge")
    return [write_edge_lower(base / "lower.tar", chunk_size=CHUNK), write_edge_upper(base / "upper.tar")]


@pytest.mark.parametrize(
    ("compressor", "digester"),
    [("zstd", "blake3"), ("lz4_block", "sha256"), ("none", "blake3")],
)
def test_edge_image_round_trips_through_the_reader(
    tmp_path: Path, edge_tars: list[Path], compressor: str, digester: str
) -> None:
    converted = convert(
        tmp_path, NydusDriver(compressor=compressor, chunk_size=CHUNK, digester=digester), edge_tars
    )
    image = RafsImage.from_bootstrap_layer(converted.bootstrap_layer, converted.blobs)
    reports = image.verify()
    assert [r.sha256 for r in reports] == [b.blob_id for b in image.bootstrap.blobs]
    assert image.bootstrap.chunk_size == CHUNK
    assert diff_trees(expected_tree(edge_tars), image.to_fstree()) == []


def test_each_blob_layer_verifies_on_its_own(tmp_path: Path, edge_tars: list[Path]) -> None:
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    for blob_id, path in converted.blobs.items():
        image = RafsImage.from_blob(path)
        (report,) = image.verify()
        assert report.sha256 == blob_id
        assert [e.name for e in report.toc][-1] == "image.boot"
    lower = RafsImage.from_blob(converted.blobs[sha256_blob_of(converted, 0)])
    assert diff_trees(expected_tree(edge_tars[:1]), lower.to_fstree()) == []


def sha256_blob_of(converted: Converted, index: int) -> str:
    return list(converted.blobs)[index]


def test_bootstrap_layer_carries_one_blob_meta_per_blob(tmp_path: Path, edge_tars: list[Path]) -> None:
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    layer = open_bootstrap_layer(converted.bootstrap_layer)
    image = RafsImage(layer.bootstrap, converted.blobs)
    with_chunks = {b.blob_id for b in image.bootstrap.blobs if b.chunk_count}
    assert set(layer.blob_metas) == with_chunks
    image.check_blob_metas(layer.blob_metas)
    image.verify()


def test_fsck_erofs_extracts_what_the_reader_reads(tmp_path: Path, edge_tars: list[Path]) -> None:
    fsck = shutil.which("fsck.erofs")
    if fsck is None:
        pytest.skip("fsck.erofs (Debian erofs-utils) is not installed")
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    layer = open_bootstrap_layer(converted.bootstrap_layer)
    bootstrap = tmp_path / "image.boot"
    bootstrap.write_bytes(layer.bootstrap)
    image = RafsImage(layer.bootstrap, converted.blobs)
    devices = []
    for entry in image.bootstrap.blobs:
        device = tmp_path / f"raw{entry.index}.bin"
        with device.open("wb") as out:
            expand_blob(image.blob(entry.index), entry, out)
        devices.append(f"--device={device}")
    out = tmp_path / "out"
    result = subprocess.run(
        [fsck, *devices, f"--extract={out}", str(bootstrap)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    differences = diff_trees(image.to_fstree(), tree_from_directory(out), ignore_fields=("mtime", "xattrs"))
    # erofs-utils 1.5: hardlinks become copies, chown after chmod drops setuid/setgid (spec §12.1).
    setid_lost = re.compile(r".*: mode (\d+) != (\d+)")
    unexplained = [
        d
        for d in differences
        if not d.startswith("hardlinks")
        and not ((m := setid_lost.fullmatch(d)) and int(m[1]) & ~0o6000 == int(m[2]))
    ]
    assert unexplained == []


def write_stress_layer(path: Path) -> Path:
    """Shapes the edge tars lack: multi-block directories, long symlink targets, big xattr sets."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs: object) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = (
                kind,
                1_700_000_000,
                0o755 if kind == tarfile.DIRTYPE else 0o644,
            )
            for key, value in attrs.items():
                setattr(info, key, value)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("big", tarfile.DIRTYPE)
        for i in range(300):  # ~300 x (12 + 60) bytes of dirents: several 4 KiB blocks
            add(f"big/{i:04d}-" + "n" * 55, data=f"file {i}\n".encode())
        add("big/!sorts-before-dot", data=b"bang\n")
        add("links", tarfile.DIRTYPE)
        add("links/long-target", tarfile.SYMTYPE, linkname="/" + "t" * 3000)
        add("links/block-target", tarfile.SYMTYPE, linkname="x/" * 2048 + "end")
        xattrs = {f"SCHILY.xattr.user.k{i:03d}": "v" * (i % 50) for i in range(120)}
        add("xattr-heavy", data=b"x" * 5000, pax_headers=xattrs)
        add("empty-dir", tarfile.DIRTYPE)
    return path


def write_metadata_only_layer(path: Path) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("only-dirs/nested")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, 1_700_000_100
        archive.addfile(info)
        empty = tarfile.TarInfo("only-dirs/empty-file")
        empty.mtime = 1_700_000_100
        archive.addfile(empty, io.BytesIO(b""))
    return path


def test_stress_and_metadata_only_layers_round_trip(tmp_path: Path) -> None:
    tars = [write_stress_layer(tmp_path / "stress.tar"), write_metadata_only_layer(tmp_path / "meta.tar")]
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), tars)
    image = RafsImage.from_bootstrap_layer(converted.bootstrap_layer, converted.blobs)
    image.verify()
    assert image.inode("/big").size > 3 * 4096
    assert diff_trees(expected_tree(tars), image.to_fstree()) == []
    for path in converted.blobs.values():
        RafsImage.from_blob(path).verify()


def test_image_level_rules_hold_for_the_writer_output(tmp_path: Path, edge_tars: list[Path]) -> None:
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    image = check_image_layers(converted.manifest)
    assert diff_trees(expected_tree(edge_tars), image.to_fstree()) == []


@pytest.mark.parametrize(
    ("layer", "change", "message"),
    [
        (0, {"media_type": "application/vnd.oci.image.layer.v1.tar"}, "media type"),
        (0, {"annotations": {}}, "nydus-blob"),
        (1, {"diff_id": "sha256:" + "0" * 64}, "diff_id"),
        (
            0,
            {"annotations": {"containerd.io/snapshot/nydus-blob": "true", "containerd.io/uncompressed": "x"}},
            "uncompressed",
        ),
        (-1, {"annotations": {"containerd.io/snapshot/nydus-bootstrap": "true"}}, "nydus-fs-version"),
        (-1, {"diff_id": "sha256:" + "0" * 64}, "uncompressed tar"),
    ],
)
def test_image_level_violations_are_named(
    tmp_path: Path, edge_tars: list[Path], layer: int, change: dict[str, object], message: str
) -> None:
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    layers = list(converted.manifest)
    layers[layer] = replace(layers[layer], **change)  # type: ignore[arg-type]
    with pytest.raises(NydusFormatError, match=message):
        check_image_layers(layers)


def test_a_blob_missing_from_the_manifest_is_named(tmp_path: Path, edge_tars: list[Path]) -> None:
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    with pytest.raises(NydusFormatError, match="is not a manifest layer"):
        check_image_layers(converted.manifest[1:])


@pytest.mark.parametrize("where", ["chunk", "chunk-info", "bootstrap"])
def test_flipped_byte_in_writer_output_is_detected(tmp_path: Path, edge_tars: list[Path], where: str) -> None:
    """The issue's acceptance: one flipped byte in a chunk, the chunk-info table or the bootstrap."""
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars)
    blob_id, blob_path = next(iter(converted.blobs.items()))
    if where == "bootstrap":
        layer = open_bootstrap_layer(converted.bootstrap_layer)
        boot = bytearray(layer.bootstrap)
        image = RafsImage(bytes(boot), converted.blobs)
        inode = image.inode("/data/multi-chunk")
        boot[inode.offset + 5] ^= 0x40  # i_mode high byte: the file's type changes
        with pytest.raises(NydusFormatError, match="special file has layout 4"):
            RafsImage(bytes(boot), converted.blobs).verify()
        boot[inode.offset + 5] ^= 0x40
        boot[inode.offset + 4] ^= 0x40  # a permission bit: structurally valid, caught by the tree compare
        flipped = RafsImage(bytes(boot), converted.blobs)
        flipped.verify()
        assert diff_trees(expected_tree(edge_tars), flipped.to_fstree()) == [
            "/data/multi-chunk: mode 420 != 484"
        ]
        return
    blob = NydusBlob(blob_path)
    offset = blob.chunks[3].compressed_offset + 5 if where == "chunk" else blob.header.ci_offset + 17  # type: ignore[union-attr]
    data = bytearray(blob_path.read_bytes())
    data[offset] ^= 0x01
    blob_path.write_bytes(bytes(data))
    with pytest.raises(NydusFormatError):
        check_image_layers(converted.manifest)
    with pytest.raises(NydusFormatError):
        RafsImage.from_bootstrap_layer(converted.bootstrap_layer, {blob_id: blob_path}).verify(
            check_blob_ids=False
        )


@pytest.mark.slow
def test_debian_rootfs_round_trips_through_the_reader(
    tmp_path: Path, rootfs_image: tuple[object, dict[str, Path]]
) -> None:
    """A real Debian minbase image (two layers, whiteouts) with the default 1 MiB chunks."""
    _, tars = rootfs_image
    layers = [tars["rootfs-lower"], tars["rootfs-upper"]]
    converted = convert(tmp_path, NydusDriver(), layers)
    image = check_image_layers(converted.manifest)
    assert sum(1 for _ in image.list_tree()) > 3000
    assert diff_trees(expected_tree(layers), image.to_fstree()) == []


def write_sharing_layer(path: Path, lower: Path) -> Path:
    """A layer with two files copied from the edge lower layer and one new file."""
    with tarfile.open(lower) as source, tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in ("data/multi-chunk", "data/exact-chunk"):
            info = source.getmember(name)
            archive.addfile(info, source.extractfile(info))
        new = tarfile.TarInfo("fresh/new-file")
        data = b"only in the second image\n" * 5000
        new.size, new.mtime = len(data), 1_700_000_000
        archive.addfile(new, io.BytesIO(data))
    return path


def test_chunk_dict_image_round_trips_and_stores_no_shared_chunk(
    tmp_path: Path, edge_tars: list[Path]
) -> None:
    dict_image = convert(tmp_path / "dict", NydusDriver(chunk_size=CHUNK), edge_tars[:1])
    dict_bootstrap = dict_image.blobs[next(iter(dict_image.blobs))].parent / "bootstrap.tar.gz"
    shutil.copy(dict_image.bootstrap_layer, dict_bootstrap)
    sharing = write_sharing_layer(tmp_path / "sharing.tar", edge_tars[0])
    driver = NydusDriver(chunk_size=CHUNK, chunk_dict=str(dict_bootstrap))
    converted = convert(tmp_path / "image", driver, [sharing])
    # the dict blob becomes an extra manifest layer right before the bootstrap layer
    blobs = {**converted.blobs, **dict_image.blobs}
    image = check_image_layers(converted.manifest)
    assert {b.blob_id for b in image.bootstrap.blobs} == set(blobs)
    assert diff_trees(expected_tree([sharing]), image.to_fstree()) == []
    own_id = next(iter(converted.blobs))
    own_index = next(b.index for b in image.bootstrap.blobs if b.blob_id == own_id)
    shared = {
        addr.blob_index for p in ("/data/multi-chunk", "/data/exact-chunk") for addr in image.inode(p).chunks
    }
    assert own_index not in shared
    # the per-layer bootstrap references the dict blob too, its own blob by the placeholder id
    layer_image = RafsImage.from_blob(converted.blobs[own_id])
    layer_image.blob_paths.update(dict_image.blobs)
    layer_image.verify()


def test_cli_conversion_passes_the_image_level_rules(test_images: ImageSet, tmp_path: Path) -> None:
    """`acceld convert --driver nydus` on the edge test image: manifest, config, layers and tree."""
    layout = tmp_path / "layout"
    shutil.copytree(test_images.layout, layout)
    acceld = str(Path(sys.executable).with_name("acceld"))
    result = subprocess.run(
        [acceld, "convert", f"oci:{layout}:edge", "--driver", "nydus"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"ACCELD_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    tags = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in json.loads((layout / "index.json").read_bytes())["manifests"]
        if "annotations" in m
    }
    manifest = read_blob_json(layout, tags["edge-nydus"])
    config = read_blob_json(layout, manifest["config"]["digest"])
    check_image_metadata(manifest, config)
    assert manifest["subject"]["digest"] == test_images.edge.digest
    layers = [
        ManifestLayer(
            blob_path(layout, d["digest"]), d["mediaType"], d["digest"], diff_id, d.get("annotations", {})
        )
        for d, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)
    ]
    image = check_image_layers(layers)
    source = read_blob_json(layout, test_images.edge.digest)
    source_tars = []
    for n, layer in enumerate(source["layers"]):
        tar = tmp_path / f"source{n}.tar"
        with gzip.open(blob_path(layout, layer["digest"])) as unzipped, tar.open("wb") as out:
            shutil.copyfileobj(unzipped, out)
        source_tars.append(tar)
    assert diff_trees(expected_tree(source_tars), image.to_fstree()) == []


def test_image_metadata_violations_are_named() -> None:
    boot = {"annotations": {"containerd.io/snapshot/nydus-bootstrap": "true"}}
    manifest = {"layers": [{"annotations": {}}, boot], "subject": {"digest": "sha256:" + "1" * 64}}
    history = [{"created_by": "x"}, {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}]
    config = {"rootfs": {"diff_ids": ["a", "b"]}, "history": history}
    check_image_metadata(manifest, config)
    with pytest.raises(NydusFormatError, match="1 diff_ids for 2 manifest layers"):
        check_image_metadata(manifest, {**config, "rootfs": {"diff_ids": ["a"]}})
    with pytest.raises(NydusFormatError, match="last config history entry"):
        check_image_metadata(
            manifest, {**config, "history": [{**history[1], "created": "2024-01-01T00:00:00Z"}]}
        )
    with pytest.raises(NydusFormatError, match="not the Nydus bootstrap layer"):
        check_image_metadata({**manifest, "layers": [boot, {}]}, config)
    with pytest.raises(NydusFormatError, match="platform"):
        check_image_metadata({**manifest, "subject": {"platform": {"os": "linux"}}}, config)


def test_upstream_all_entry_type_tar_round_trips(tmp_path: Path) -> None:
    """../shared/fixtures/nydus/all-entry-type.tar: one file with four names (nlink 4), a dangling symlink."""
    tar = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nydus" / "all-entry-type.tar"
    if not tar.is_file():
        pytest.skip("../shared/fixtures/nydus is not present")
    converted = convert(tmp_path, NydusDriver(), [tar])
    image = check_image_layers(converted.manifest)
    tree = image.to_fstree()
    assert diff_trees(expected_tree([tar]), tree) == []
    (group,) = tree.hardlink_groups()
    assert len(group) == 4
    assert image.inode("/tar/dir1/dir3/hardlink1.txt").nlink == 4
    assert tree["/tar/dir2/symlink1.txt"].target == "../dir1/dir3/file1.txt"


def test_flips_in_a_writer_blob_tail_are_detected(tmp_path: Path, edge_tars: list[Path]) -> None:
    """Blob meta, digests, image.boot, TOC and tar headers of a writer blob: sampled single-byte flips.

    Most are structural or digest errors; the rest (zstd encodings that inflate to the same bytes,
    the legacy-garbage tail of TOC reserved2) change the blob's sha256, i.e. its id.
    """
    converted = convert(tmp_path, NydusDriver(chunk_size=CHUNK), edge_tars[1:])
    ((blob_id, path),) = converted.blobs.items()
    original = path.read_bytes()
    start = NydusBlob(path).parts_by_name["blob.meta"].offset
    missed = []
    for offset in range(start, len(original), 5):
        data = bytearray(original)
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            RafsImage.from_blob(path).verify()
        except NydusFormatError:
            continue
        missed.append(offset)
    assert missed == []
    assert blob_id == path.name
