"""The Nydus writer judged by EROFS: fsck.erofs (erofs-utils) and, where loop devices work, the kernel.

Blobs are expanded to raw devices (spec §12.2) by code in this file, independent of the writer.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import lz4.block
import pytest
import zstandard
from harness.tars import write_edge_lower, write_edge_upper
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from acceld.formats import fstree
from acceld.formats.driver import FormatError, LayerBlob, SourceLayer
from acceld.formats.nydus import NydusDriver

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "nydus"
pytestmark = pytest.mark.skipif(shutil.which("fsck.erofs") is None, reason="erofs-utils is not installed")


# ---- independent blob expansion (§12.2) -------------------------------------------------------


def _toc(blob: bytes) -> dict[str, tuple[int, int, int, int]]:
    """name -> (flags, offset, compressed size, uncompressed size) from the tail TOC."""
    header = tarfile.TarInfo.frombuf(blob[-512:], "utf-8", "surrogateescape")
    assert header.name == "rafs.blob.toc"
    raw = blob[-512 - header.size : -512]
    entries = {}
    for at in range(0, len(raw), 128):
        flags, _, name, _, offset, csize, usize = struct.unpack_from("<II16s32sQQQ", raw, at)
        entries[name.rstrip(b"\0").decode()] = (flags, offset, csize, usize)
    return entries


def _inflate(data: bytes, algorithm: int, size: int) -> bytes:
    if algorithm == 3:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    elif algorithm == 1:
        out = lz4.block.decompress(data, uncompressed_size=size)
    else:
        out = data
    assert len(out) == size
    return out


def _blob_table(boot: bytes) -> list[tuple[str, int, int]]:
    """(blob id, compression_algo, uncompressed_size) per blob-table entry."""
    offset, size = struct.unpack_from("<QI", boot, 1152 + 8)
    table = []
    for at in range(offset, offset + size, 256):
        blob_id = boot[at : at + 64].rstrip(b"\0").decode()
        table.append(
            (blob_id, struct.unpack_from("<I", boot, at + 76)[0], struct.unpack_from("<Q", boot, at + 96)[0])
        )
    return table


def expand_blob(blob: bytes, algorithm: int, uncompressed_size: int) -> bytes:
    entries = _toc(blob)
    _, ci_offset, ci_csize, ci_usize = entries["blob.meta"]
    header = blob[ci_offset + ci_csize : ci_offset + ci_csize + 4096]
    magic, _features, ci_comp, count, h_off, h_csize, h_usize = struct.unpack_from("<IIIIQQQ", header)
    assert magic == 0xB10BB10B == struct.unpack_from("<I", header, 4092)[0]
    assert (h_off, h_csize, h_usize) == (ci_offset, ci_csize, ci_usize)
    ci = _inflate(blob[ci_offset : ci_offset + ci_csize], ci_comp, ci_usize)
    digests = blob[entries["blob.digest"][1] :][: 32 * count] if "blob.digest" in entries else None
    device = bytearray(uncompressed_size)
    for index in range(count):
        uncomp, comp = struct.unpack_from("<QQ", ci, 16 * index)
        uoff = uncomp & 0xFFF_FFFF_F000
        usize = ((uncomp >> 44) | ((uncomp >> 8) & 0xF) << 20) + 1
        coff = comp & 0xFF_FFFF_FFFF
        csize = ((comp >> 44) | ((comp >> 40) & 0xF) << 20) + 1
        data = blob[coff : coff + csize]
        chunk = _inflate(data, algorithm, usize) if csize != usize else data
        if digests is not None:
            import blake3

            assert digests[32 * index : 32 * index + 32] in (
                blake3.blake3(chunk).digest(),
                hashlib.sha256(chunk).digest(),
            )
        device[uoff : uoff + usize] = chunk
    return bytes(device)


def write_devices(boot: bytes, blobs: dict[str, Path], directory: Path) -> list[Path]:
    devices = []
    for number, (blob_id, algorithm, size) in enumerate(_blob_table(boot)):
        device = directory / f"device{number}.raw"
        device.write_bytes(expand_blob(blobs[blob_id].read_bytes(), algorithm, size))
        devices.append(device)
    return devices


def fsck_extract(boot_path: Path, devices: Sequence[Path], target: Path) -> None:
    command = ["fsck.erofs", *(f"--device={d}" for d in devices), f"--extract={target}", str(boot_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def dump_nid(boot_path: Path, devices: Sequence[Path], path: str) -> str:
    command = ["dump.erofs", *(f"--device={d}" for d in devices), f"--path={path}", str(boot_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return next(line for line in result.stdout.splitlines() if "NID" in line)


# ---- conversion helpers -----------------------------------------------------------------------


def convert(driver: NydusDriver, tars: Sequence[Path], workdir: Path) -> tuple[list[LayerBlob], Path, Path]:
    """Convert every layer and finalize; returns the blob layers, the bootstrap layer and image.boot."""
    layers = []
    for number, tar in enumerate(tars):
        blob_path = workdir / f"layer{number}.blob"
        with tar.open("rb") as source, blob_path.open("wb") as out:
            output = driver.convert_layer(source, out, SourceLayer("sha256:" + "0" * 64, "t", 0, ""), workdir)
        digest = "sha256:" + hashlib.sha256(blob_path.read_bytes()).hexdigest()
        assert output.diff_id == digest
        layers.append(
            LayerBlob(
                blob_path,
                output.media_type,
                digest,
                blob_path.stat().st_size,
                output.diff_id,
                output.annotations,
            )
        )
    additions = driver.finalize(layers, workdir)
    bootstrap_layer = additions.extra_layers[-1]
    with tarfile.open(bootstrap_layer.path, "r:gz") as archive:
        member = archive.extractfile("image/image.boot")
        assert member is not None
        boot_path = workdir / "image.boot"
        boot_path.write_bytes(member.read())
    return [*layers, *additions.extra_layers[:-1]], bootstrap_layer.path, boot_path


def blob_files(layers: Sequence[LayerBlob]) -> dict[str, Path]:
    return {layer.digest.removeprefix("sha256:"): layer.path for layer in layers}


def expected_tree(tars: Sequence[Path]) -> fstree.FsTree:
    handles = [tar.open("rb") for tar in tars]
    try:
        return fstree.tree_from_layers(handles)
    finally:
        for handle in handles:
            handle.close()


def check_with_fsck(boot_path: Path, blobs: dict[str, Path], tars: Sequence[Path], workdir: Path) -> None:
    """fsck.erofs accepts the bootstrap and extracts exactly the source tree.

    erofs-utils 1.5 extracts hardlinks as copies, does not restore xattrs and loses setuid/setgid
    (it chowns after chmod): hardlinks are checked through dump.erofs NIDs instead, and xattrs and
    the full mode by the kernel mount test.
    """
    devices = write_devices(boot_path.read_bytes(), blobs, workdir)
    target = workdir / "extracted"
    fsck_extract(boot_path, devices, target)
    expected = expected_tree(tars)
    differences = fstree.diff_trees(expected, fstree.tree_from_directory(target), ignore_fields=("xattrs",))
    assert [d for d in differences if not _extraction_artifact(expected, d)] == []
    for group in expected.hardlink_groups():
        assert len({dump_nid(boot_path, devices, path) for path in group}) == 1, group
    shutil.rmtree(target)


def _extraction_artifact(expected: fstree.FsTree, difference: str) -> bool:
    """Differences that come from extracting with erofs-utils 1.5 onto a Linux filesystem."""
    if difference.startswith("hardlinks missing"):
        return True
    path, _, rest = difference.partition(": mode ")
    if not rest:
        return False
    want, have = (int(value) for value in rest.split(" != "))
    if expected[path].kind == "symlink":
        return have == 0o777  # symlink() always creates 0777
    return want & 0o6000 != 0 and want & ~0o6000 == have


@pytest.fixture
def edge_tars(tmp_path: Path) -> list[Path]:
    return [
        write_edge_lower(tmp_path / "lower.tar", chunk_size=1 << 20),
        write_edge_upper(tmp_path / "upper.tar"),
    ]


# ---- tests -------------------------------------------------------------------------------------


def test_edge_image_passes_fsck_and_equals_source(edge_tars: list[Path], tmp_path: Path) -> None:
    layers, _, boot = convert(NydusDriver(), edge_tars, tmp_path)
    check_with_fsck(boot, blob_files(layers), edge_tars, tmp_path)


def test_temp_files_go_only_to_the_work_directory(
    edge_tars: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system's temp directory may be a small tmpfs (memory): a layer's spools (digests, the
    compressed bootstrap) belong with its other work files, whose disk use the limits bound."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "tempdir", str(tmp_path / "no-system-temp-directory"))
        layers, _, boot = convert(NydusDriver(), edge_tars, workdir)
    check_with_fsck(boot, blob_files(layers), edge_tars, workdir)


@pytest.mark.parametrize(
    ("compressor", "digester", "chunk_size"),
    [("lz4_block", "sha256", 0x1000), ("none", "blake3", 0x10000), ("zstd", "sha256", 0x1000000)],
)
def test_options_pass_fsck(compressor: str, digester: str, chunk_size: int, tmp_path: Path) -> None:
    tars = [
        write_edge_lower(tmp_path / "lower.tar", chunk_size=chunk_size),
        write_edge_upper(tmp_path / "upper.tar"),
    ]
    driver = NydusDriver(compressor=compressor, digester=digester, chunk_size=chunk_size)
    layers, _, boot = convert(driver, tars, tmp_path)
    check_with_fsck(boot, blob_files(layers), tars, tmp_path)


def test_per_layer_bootstraps_pass_fsck(edge_tars: list[Path], tmp_path: Path) -> None:
    layers, _, _ = convert(NydusDriver(), edge_tars, tmp_path)
    for number, (layer, tar) in enumerate(zip(layers, edge_tars, strict=True)):
        blob = layer.path.read_bytes()
        flags, offset, csize, usize = _toc(blob)["image.boot"]
        raw = blob[offset : offset + csize]
        boot = zstandard.ZstdDecompressor().decompress(raw, max_output_size=usize) if flags == 2 else raw
        boot_path = tmp_path / f"layer{number}.boot"
        boot_path.write_bytes(boot)
        assert {blob_id for blob_id, _, _ in _blob_table(boot)} <= {"x" * 64}
        devices = write_devices(boot, {"x" * 64: layer.path}, tmp_path)
        target = tmp_path / f"extract{number}"
        fsck_extract(boot_path, devices, target)
        # per layer, whiteouts are plain empty files: compare with the tar read as a lowest layer
        raw_tree = fstree.FsTree()
        with tarfile.open(tar) as archive:
            for info in archive:
                if info.islnk():
                    raw_tree.link(info.name, info.linkname)
                else:
                    content = archive.extractfile(info) if info.isreg() else None
                    raw_tree.add(info.name, fstree._node_from_tarinfo(info, content))
        differences = fstree.diff_trees(
            raw_tree, fstree.tree_from_directory(target), ignore_fields=("xattrs",)
        )
        assert [
            d for d in differences if not _extraction_artifact(raw_tree, d) and not d.startswith("/:")
        ] == []


def test_upstream_all_entry_type_tar(tmp_path: Path) -> None:
    tars = [FIXTURES / "all-entry-type.tar"]
    layers, _, boot = convert(NydusDriver(), tars, tmp_path)
    check_with_fsck(boot, blob_files(layers), tars, tmp_path)


def test_macos_tar_with_namespaceless_xattrs_is_rejected(tmp_path: Path) -> None:
    with (
        (FIXTURES / "all-entry-type-macos.tar").open("rb") as source,
        pytest.raises(FormatError, match="xattr"),
    ):
        NydusDriver().convert_layer(
            source, io.BytesIO(), SourceLayer("sha256:" + "0" * 64, "t", 0, ""), tmp_path
        )


@pytest.mark.parametrize("garbage", [b"not a tar at all" * 64, b"\0" * 100, gzip.compress(b"x" * 4096)])
def test_bad_tar_is_a_format_error(garbage: bytes, tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        NydusDriver().convert_layer(
            io.BytesIO(garbage), io.BytesIO(), SourceLayer("sha256:" + "0" * 64, "t", 0, ""), tmp_path
        )


def test_truncated_tar_is_a_format_error(edge_tars: list[Path], tmp_path: Path) -> None:
    data = edge_tars[0].read_bytes()[: 1 << 20]
    with pytest.raises(FormatError):
        NydusDriver().convert_layer(
            io.BytesIO(data), io.BytesIO(), SourceLayer("sha256:" + "0" * 64, "t", 0, ""), tmp_path
        )


# ---- kernel mount -----------------------------------------------------------------------------


def _loop_reason() -> str | None:
    if shutil.which("losetup") is None or shutil.which("mount") is None:
        return "losetup/mount not installed"
    if subprocess.run(["losetup", "-f"], capture_output=True, check=False).returncode != 0:
        return "no free loop device (losetup -f failed)"
    if "erofs" not in Path("/proc/filesystems").read_text():
        return "kernel has no erofs support"
    return None


@contextlib.contextmanager
def _loop(path: Path) -> Iterator[str]:
    device = subprocess.run(
        ["losetup", "-f", "--show", "-r", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def kernel_tree(boot: Path, devices: Sequence[Path], mountpoint: Path) -> fstree.FsTree:
    """Mount the bootstrap with its blob devices (or, without devices, as one flat image) and read it."""
    mountpoint.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        boot_dev = stack.enter_context(_loop(boot))
        options = ",".join(["ro", *(f"device={stack.enter_context(_loop(d))}" for d in devices)])
        mounted = subprocess.run(
            ["mount", "-t", "erofs", "-o", options, boot_dev, str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"kernel refused the loop mount here: {mounted.stderr.strip()}")
        try:
            return fstree.tree_from_directory(mountpoint)
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)


def flat_image(boot: Path, devices: Sequence[Path], target: Path) -> Path:
    """The `nydus-image export --block` layout: bootstrap, then each blob at its mapped_blkaddr."""
    raw = boot.read_bytes()
    with target.open("wb") as out:
        out.write(raw)
        for number, device in enumerate(devices):
            blocks, mapped = struct.unpack_from("<II", raw, 1408 + 128 * number + 64)
            assert device.stat().st_size == blocks * 4096
            out.seek(mapped * 4096)
            out.write(device.read_bytes())
    return target


@pytest.mark.skipif(_loop_reason() is not None, reason=str(_loop_reason()))
def test_kernel_mount_serves_identical_tree(edge_tars: list[Path], tmp_path: Path) -> None:
    layers, _, boot = convert(NydusDriver(), edge_tars, tmp_path)
    devices = write_devices(boot.read_bytes(), blob_files(layers), tmp_path)
    expected = expected_tree(edge_tars)
    assert fstree.diff_trees(expected, kernel_tree(boot, devices, tmp_path / "mnt")) == []
    flat = flat_image(boot, devices, tmp_path / "flat.img")
    assert fstree.diff_trees(expected, kernel_tree(flat, [], tmp_path / "mnt")) == []


# ---- layouts that stress the bootstrap writer -----------------------------------------------------


def _write_tar(path: Path, entries: Sequence[tuple[str, bytes | str | None]]) -> Path:
    """(name, content): bytes → file, str → symlink target, None → directory."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                archive.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                archive.addfile(info, io.BytesIO(content))
    return path


def test_large_directories_symlinks_and_metadata_only_layers(tmp_path: Path) -> None:
    names = [(f"big/{'entry-' * 20}{i:05d}", f"{i}\n".encode()) for i in range(700)]
    first = _write_tar(
        tmp_path / "first.tar",
        [
            ("big", None),
            *names,
            ("big/zz-inline-link", "/" + "x" * 4000),  # Linux symlinks stop at 4095 bytes
            ("big/zz-plain-block-link", "y" * 4090),
            ("wide", None),
            *[(f"wide/d{i:03d}", None) for i in range(300)],
        ],
    )
    metadata_only = _write_tar(tmp_path / "meta.tar", [("wide/d000/sub", None), ("empty-dir", None)])
    tars = [first, metadata_only]
    layers, _, boot = convert(NydusDriver(), tars, tmp_path)
    assert "image.blob" not in _toc(layers[1].path.read_bytes())
    assert len(_blob_table(boot.read_bytes())) == 1
    check_with_fsck(boot, blob_files(layers), tars, tmp_path)


# ---- chunk dictionary -------------------------------------------------------------------------


def _stored_digests(blob: Path) -> set[bytes]:
    data = blob.read_bytes()
    entries = _toc(data)
    if "blob.digest" not in entries:
        return set()
    _, offset, size, _ = entries["blob.digest"]
    return {data[at : at + 32] for at in range(offset, offset + size, 32)}


def test_chunk_dict_stores_no_shared_chunk_again(tmp_path: Path) -> None:
    dict_dir, work = tmp_path / "dict", tmp_path / "work"
    dict_dir.mkdir()
    work.mkdir()
    dict_tar = write_edge_lower(tmp_path / "dict.tar", chunk_size=1 << 20)
    dict_layers, bootstrap_layer, _ = convert(NydusDriver(), [dict_tar], dict_dir)
    bootstrap_hex = hashlib.sha256(bootstrap_layer.read_bytes()).hexdigest()
    shutil.copy(bootstrap_layer, dict_dir / bootstrap_hex)
    for layer in dict_layers:
        shutil.copy(layer.path, dict_dir / layer.digest.removeprefix("sha256:"))
    dict_digests = _stored_digests(dict_layers[0].path)

    with tarfile.open(dict_tar) as archive:
        shared = {
            name: archive.extractfile(name).read()  # type: ignore[union-attr]
            for name in ("data/multi-chunk", "data/exact-chunk", "etc/hostname", "data/zeros")
        }
    image_tar = _write_tar(
        tmp_path / "image.tar",
        [
            ("copy", None),
            *[(f"copy/{name.replace('/', '-')}", data) for name, data in shared.items()],
            ("copy/new", b"only in the new image\n" * 5000),
        ],
    )
    driver = NydusDriver(chunk_dict=str(dict_dir / bootstrap_hex))
    layers, _, boot = convert(driver, [image_tar], work)
    new_digests = _stored_digests(layers[0].path)
    assert new_digests and not new_digests & dict_digests
    assert len(new_digests) == 1  # only copy/new, a single chunk
    dict_blob = dict_layers[0].digest.removeprefix("sha256:")
    assert [blob_id for blob_id, _, _ in _blob_table(boot.read_bytes())] == [
        layers[0].digest.removeprefix("sha256:"),
        dict_blob,
    ]
    assert layers[1].path == dict_dir / dict_blob
    assert layers[1].annotations == {"containerd.io/snapshot/nydus-blob": "true"}
    check_with_fsck(boot, blob_files(layers), [image_tar], work)
    if _loop_reason() is None:  # two devices: chunk addresses of both blobs resolved by the kernel
        devices = write_devices(boot.read_bytes(), blob_files(layers), work)
        assert fstree.diff_trees(expected_tree([image_tar]), kernel_tree(boot, devices, work / "mnt")) == []


def test_chunk_dict_with_other_chunk_size_is_rejected(tmp_path: Path) -> None:
    dict_tar = write_edge_lower(tmp_path / "dict.tar", chunk_size=1 << 20)
    _, bootstrap_layer, _ = convert(NydusDriver(), [dict_tar], tmp_path)
    driver = NydusDriver(chunk_dict=str(bootstrap_layer), chunk_size=0x10000)
    with dict_tar.open("rb") as source, pytest.raises(FormatError, match="chunk dict"):
        driver.convert_layer(source, io.BytesIO(), SourceLayer("sha256:" + "0" * 64, "t", 0, ""), tmp_path)


def test_chunk_indexes_and_xattrs_crossing_blocks(tmp_path: Path) -> None:
    """4 KiB chunks: a 3 MB file needs 6 KiB of chunk indexes; xattrs larger than a block."""
    big = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(100_000))[:3_000_000]
    with tarfile.open(tmp_path / "layer.tar", "w", format=tarfile.PAX_FORMAT) as archive:
        for name, data, xattr_size in [
            ("a-big", big, 0),
            ("b-xattrs", b"x", 6000),
            ("c-small", b"y" * 5000, 3900),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            if xattr_size:
                info.pax_headers = {"SCHILY.xattr.user.big": "v" * xattr_size, "SCHILY.xattr.user.s": "1"}
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("d-dir")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        info.pax_headers = {"SCHILY.xattr.user.dir": "d" * 4000}
        archive.addfile(info)
    tars = [tmp_path / "layer.tar"]
    layers, _, boot = convert(NydusDriver(chunk_size=0x1000, compressor="lz4_block"), tars, tmp_path)
    check_with_fsck(boot, blob_files(layers), tars, tmp_path)
    if _loop_reason() is None:
        devices = write_devices(boot.read_bytes(), blob_files(layers), tmp_path)
        assert fstree.diff_trees(expected_tree(tars), kernel_tree(boot, devices, tmp_path / "mnt")) == []


def test_prefetch_table_holds_the_nids_of_matching_patterns(edge_tars: list[Path], tmp_path: Path) -> None:
    driver = NydusDriver(prefetch_patterns=["/etc", "/does/not/exist", "/data/small"])  # type: ignore[arg-type]
    layers, _, boot = convert(driver, edge_tars, tmp_path)
    raw = boot.read_bytes()
    offset, size = struct.unpack_from("<QI", raw, 1152 + 40)
    nids = struct.unpack_from(f"<{size // 4}I", raw, offset)
    devices = write_devices(raw, blob_files(layers), tmp_path)
    expected = [dump_nid(boot, devices, path) for path in ("/etc", "/data/small")]
    assert [f"NID: {nid}" for nid in nids] == [line.split()[0] + " " + line.split()[1] for line in expected]


# ---- random layouts ---------------------------------------------------------------------------

_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=255).filter(
    lambda n: n not in (".", "..") and not n.startswith(".wh.")
)
_ENTRY = st.tuples(
    st.lists(_NAME.map(lambda n: n[:40]), min_size=0, max_size=2),  # parent directories
    _NAME,
    st.one_of(
        st.integers(0, 70_000).map(lambda size: ("file", size)),
        st.integers(1, 4095).map(lambda size: ("symlink", size)),
        st.integers(0, 5000).map(lambda size: ("xattr-file", size)),
        st.just(("dir", 0)),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(_ENTRY, min_size=1, max_size=120), chunk_shift=st.integers(12, 16))
def test_random_trees_pass_fsck(
    entries: list[tuple[list[str], str, tuple[str, int]]],
    chunk_shift: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("random")
    tar_path = workdir / "layer.tar"
    paths: set[str] = set()
    files: set[str] = set()
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as archive:
        for parents, name, (kind, size) in entries:
            path = "/".join([*parents, name])
            prefixes = {"/".join(parents[: i + 1]) for i in range(len(parents))}
            implied_dir = any(p.startswith(path + "/") for p in paths)
            if path in paths or prefixes & files or (implied_dir and kind != "dir"):
                continue
            paths.add(path)
            if kind != "dir":
                files.add(path)
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "t" * size, 0o777
                archive.addfile(info)
            else:
                data = hashlib.sha256(path.encode()).digest() * (size // 32 + 1)
                info.size, info.mode = size if kind == "file" else 3, 0o640
                if kind == "xattr-file":
                    info.pax_headers = {"SCHILY.xattr.user.x": "x" * size}
                archive.addfile(info, io.BytesIO(data[: info.size]))
    layers, _, boot = convert(NydusDriver(chunk_size=1 << chunk_shift), [tar_path], workdir)
    check_with_fsck(boot, blob_files(layers), [tar_path], workdir)
    shutil.rmtree(workdir)


def test_upstream_bootstrap_as_chunk_dict(tmp_path: Path) -> None:
    """A bootstrap written by nydus-image (fixture rafs-v6-2.2.boot with its blob be7d77…) as the dict."""
    dict_boot = FIXTURES / "rafs-v6-2.2.boot"
    dict_blob = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
    devices = write_devices(dict_boot.read_bytes(), {dict_blob: FIXTURES / dict_blob}, tmp_path)
    fsck_extract(dict_boot, devices, tmp_path / "dict-files")
    shared = {name: (tmp_path / "dict-files" / name).read_bytes() for name in ("lib.rs", "sync_io.rs")}
    image_tar = _write_tar(
        tmp_path / "image.tar",
        [
            ("src", None),
            *[(f"src/{name}", data) for name, data in shared.items()],
            ("src/new.rs", b"fn main() {}\n"),
        ],
    )
    work = tmp_path / "work"
    work.mkdir()
    layers, _, boot = convert(NydusDriver(chunk_dict=str(dict_boot)), [image_tar], work)
    assert len(_stored_digests(layers[0].path)) == 1  # only new.rs
    assert [blob_id for blob_id, _, _ in _blob_table(boot.read_bytes())][1:] == [dict_blob]
    assert layers[1].path == FIXTURES / dict_blob
    check_with_fsck(boot, blob_files(layers), [image_tar], work)


_PATHS = st.lists(st.sampled_from(["a", "b", "!x"]), min_size=1, max_size=3).map("/".join)
_OP = st.tuples(
    st.sampled_from(["file", "big-file", "dir", "symlink", "hardlink", "whiteout", "opaque"]), _PATHS
)


def _layer_tar(path: Path, ops: list[tuple[str, str]], number: int) -> Path:
    """Whiteouts and opaque markers first (as image builders write them), then the other entries.

    No layer both hides a lower directory (whiting it out, or marking a directory above it opaque)
    and holds a marker inside it: which attributes that directory has then (the lower one's, or
    those of the directory the marker implies) depends on the order of the markers in runtimes too.
    """
    marker_dirs = {
        name if kind == "opaque" else name.rpartition("/")[0]
        for kind, name in ops
        if kind in ("whiteout", "opaque")
    }

    def hides_a_marked_dir(kind: str, name: str) -> bool:
        if kind == "whiteout":
            return any(d == name or d.startswith(name + "/") for d in marker_dirs)
        return kind == "opaque" and any(d.startswith(name + "/") for d in marker_dirs)

    ops = [(kind, name) for kind, name in ops if not hides_a_marked_dir(kind, name)]
    ordered = [op for op in ops if op[0] in ("whiteout", "opaque")] + [
        op for op in ops if op[0] not in ("whiteout", "opaque")
    ]
    files: list[str] = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for index, (kind, name) in enumerate(ordered):
            parent, _, base = name.rpartition("/")
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid = 1_700_000_000 + index, 0o644, number
            data = b""
            if kind == "whiteout":
                info.name = "/".join(filter(None, [parent, ".wh." + base]))
            elif kind == "opaque":
                info.name = name + "/.wh..wh..opq"
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o750 + number
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, f"target-{index}"
            elif kind == "hardlink":
                if not files or files[-1] == name or files[-1].startswith(name + "/"):
                    continue  # a link replacing the directory that holds its own target: no unpacker copes
                info.type, info.linkname = tarfile.LNKTYPE, files[-1]
            else:
                data = (b"%d:%s\n" % (number, name.encode())) * (9000 if kind == "big-file" else 1)
                files.append(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(st.lists(_OP, min_size=1, max_size=14), min_size=2, max_size=3))
def test_random_layer_stacks_merge_like_an_oci_runtime(
    layers: list[list[tuple[str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("stack")
    tars = [_layer_tar(workdir / f"layer{n}.tar", ops, n) for n, ops in enumerate(layers)]
    try:
        expected_tree(tars)
    except FormatError:
        assume(False)  # e.g. an entry below a regular file: no runtime can unpack it either
    try:
        converted, _, boot = convert(NydusDriver(chunk_size=0x4000), tars, workdir)
    except FormatError as exc:
        assert "hardlink" in str(exc)  # a link whose target this layer itself replaced
        assume(False)
    check_with_fsck(boot, blob_files(converted), tars, workdir)
    shutil.rmtree(workdir)
