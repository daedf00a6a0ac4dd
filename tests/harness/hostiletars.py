"""Hostile layers, the kind an attacker pushes to make a converter exhaust memory, disk or CPU.

Every case is an OCI image in one shared layout, built once and cached under
`.cache/hostiletars/<RECIPE>/` (the bombs take a few seconds to compress). Layers are written as
streams: a 4 GiB bomb never exists uncompressed on disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from harness.images import (
    AMD64,
    CREATED,
    OCI_CONFIG,
    OCI_LAYER,
    add_blob,
    add_blob_file,
    canonical_json,
    init_layout,
    tag_in_index,
)

RECIPE = "v2"
MTIME = 1_700_000_000
GIB = 1 << 30
_ZEROS = bytes(1 << 20)
_BLOCK = 512


def header(
    name: bytes,
    typeflag: bytes = b"0",
    size: int = 0,
    *,
    linkname: bytes = b"",
    mode: int = 0o644,
    gnu: bool = False,
    extra: Callable[[bytearray], None] | None = None,
) -> bytes:
    """One tar header block (USTAR, or old GNU with `gnu`), checksum included."""
    block = bytearray(_BLOCK)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"%011o\0" % MTIME
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = b"ustar  \0" if gnu else b"ustar\x0000"
    if extra is not None:
        extra(block)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax(records: dict[bytes, bytes], name: bytes = b"PaxHeader") -> bytes:
    """A PAX `x` header with its padded payload."""
    payload = b""
    for key, value in records.items():
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        payload += str(length).encode() + body
    return header(name, b"x", len(payload)) + _pad(payload)


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % _BLOCK)


def _zeros(size: int) -> Iterator[bytes]:
    while size > 0:
        piece = _ZEROS[: min(size, len(_ZEROS))]
        size -= len(piece)
        yield piece


def _end() -> bytes:
    return bytes(2 * _BLOCK)


def zstd_bomb() -> Iterator[bytes]:
    """One 4 GiB file of zeros: about 131 KB as zstd."""
    yield header(b"zeros", size=4 * GIB)
    yield from _zeros(4 * GIB)
    yield _end()


def gzip_bomb() -> Iterator[bytes]:
    """One 1 GiB file of zeros: about 1 MB as gzip."""
    yield header(b"zeros", size=GIB)
    yield from _zeros(GIB)
    yield _end()


def huge_pax_header() -> Iterator[bytes]:
    """A 2 GiB PAX header (one comment record) before a small file."""
    size = 2 * GIB
    digits = len(str(size))
    yield header(b"PaxHeader", b"x", size)
    yield f"{size} comment=".encode()
    yield from (b"a" * len(piece) for piece in _zeros(size - digits - len(" comment=") - 1))
    yield b"\n"
    yield header(b"file", size=0)
    yield _end()


def huge_gnu_long_name() -> Iterator[bytes]:
    """A 2 GiB GNU long name (`././@LongLink`) before a small file."""
    size = 2 * GIB
    yield header(b"././@LongLink", b"L", size, gnu=True)
    yield from (b"n" * len(piece) for piece in _zeros(size))
    yield header(b"file", size=0, gnu=True)
    yield _end()


def _gnu_sparse_fields(realsize: int, segment: tuple[int, int]) -> Callable[[bytearray], None]:
    def fill(block: bytearray) -> None:
        offset, length = segment
        block[386:398] = b"%011o\0" % offset
        block[398:410] = b"%011o\0" % length
        block[483:495] = b"\x80" + realsize.to_bytes(11, "big")

    return fill


def huge_sparse_gnu() -> Iterator[bytes]:
    """An old GNU sparse entry declaring 64 GiB, with 512 real bytes at its end."""
    realsize = 64 * GIB
    yield header(
        b"sparse", b"S", _BLOCK, gnu=True, extra=_gnu_sparse_fields(realsize, (realsize - _BLOCK, _BLOCK))
    )
    yield b"x" * _BLOCK
    yield _end()


def huge_sparse_pax() -> Iterator[bytes]:
    """A PAX (GNU 1.0) sparse entry declaring 64 GiB."""
    realsize = 64 * GIB
    sparse_map = _pad(b"1\n%d\n%d\n" % (realsize - _BLOCK, _BLOCK))
    yield pax(
        {
            b"GNU.sparse.major": b"1",
            b"GNU.sparse.minor": b"0",
            b"GNU.sparse.name": b"sparse",
            b"GNU.sparse.realsize": str(realsize).encode(),
        }
    )
    yield header(b"GNUSparseFile.0/sparse", size=len(sparse_map) + _BLOCK)
    yield sparse_map + b"x" * _BLOCK
    yield _end()


def many_files(count: int = 1_000_000, per_directory: int = 1000) -> Iterator[bytes]:
    """`count` empty files in directories of `per_directory`."""
    for start in range(0, count, per_directory):
        directory = b"d%04d" % (start // per_directory)
        yield header(directory + b"/", b"5", mode=0o755)
        yield b"".join(
            header(directory + b"/f%07d" % n) for n in range(start, min(start + per_directory, count))
        )
    yield _end()


def dotdot_name() -> Iterator[bytes]:
    yield header(b"etc/", b"5", mode=0o755)
    yield header(b"etc/../../escaped", size=0)
    yield _end()


def nul_in_pax_path() -> Iterator[bytes]:
    yield pax({b"path": b"visible\0hidden"})
    yield header(b"placeholder", size=0)
    yield _end()


def below_symlink() -> Iterator[bytes]:
    yield header(b"lib", b"2", linkname=b"/tmp", mode=0o777)
    yield header(b"lib/planted", size=0)
    yield _end()


def hardlink_dotdot() -> Iterator[bytes]:
    yield header(b"file", size=0)
    yield header(b"link", b"1", linkname=b"../../file")
    yield _end()


def benign() -> Iterator[bytes]:
    data = b"hello\n"
    yield header(b"etc/", b"5", mode=0o755)
    yield header(b"etc/greeting", size=len(data))
    yield _pad(data)
    yield _end()


def toc_bomb() -> Iterator[bytes]:
    """What a hostile eStargz TOC member inflates to: a `stargz.index.json` of 1 GiB."""
    yield header(b"stargz.index.json", size=GIB)
    yield from _zeros(GIB)


def tiny_layer(n: int) -> Iterator[bytes]:
    data = b"layer %d\n" % n
    yield header(b"f%05d" % n, size=len(data))
    yield _pad(data)
    yield _end()


@dataclass(frozen=True)
class Case:
    layers: tuple[Callable[[], Iterable[bytes]], ...]
    compression: str = "gzip"


def _many_layers() -> tuple[Callable[[], Iterable[bytes]], ...]:
    return tuple((lambda n=n: tiny_layer(n)) for n in range(2000))


CASES: dict[str, Case] = {
    "benign": Case((benign,)),
    "zstd_bomb": Case((zstd_bomb,), "zstd"),
    "gzip_bomb": Case((gzip_bomb,)),
    "huge_pax_header": Case((huge_pax_header,), "zstd"),
    "huge_gnu_long_name": Case((huge_gnu_long_name,), "zstd"),
    "huge_sparse_gnu": Case((huge_sparse_gnu,)),
    "huge_sparse_pax": Case((huge_sparse_pax,)),
    "many_files": Case((many_files,)),
    "many_layers": Case(_many_layers()),
    "dotdot_name": Case((dotdot_name,)),
    "nul_in_pax_path": Case((nul_in_pax_path,)),
    "below_symlink": Case((below_symlink,)),
    "hardlink_dotdot": Case((hardlink_dotdot,)),
}


class _Compressor:
    def __init__(self, kind: str) -> None:
        if kind == "zstd":
            zstd = zstandard.ZstdCompressor(level=3).compressobj()
            self.compress, self.flush = zstd.compress, zstd.flush
        else:
            gz = zlib.compressobj(1, zlib.DEFLATED, 31)
            self.compress, self.flush = gz.compress, gz.flush


def _compress(out_path: Path, pieces: Iterable[bytes], compression: str) -> str:
    """Write `pieces` compressed to `out_path`; the sha256 of the uncompressed stream."""
    diff = hashlib.sha256()
    compressor = _Compressor(compression)
    with out_path.open("wb") as out:
        for piece in pieces:
            diff.update(piece)
            out.write(compressor.compress(piece))
        out.write(compressor.flush())
    return "sha256:" + diff.hexdigest()


def _write_layer(layout: Path, pieces: Iterable[bytes], compression: str) -> tuple[dict[str, object], str]:
    staged = layout / ".staging-layer"
    diff_id = _compress(staged, pieces, compression)
    return add_blob_file(layout, staged, OCI_LAYER[compression]), diff_id


def _build_case(layout: Path, name: str, case: Case) -> None:
    descriptors, diff_ids = [], []
    for layer in case.layers:
        descriptor, diff_id = _write_layer(layout, layer(), case.compression)
        descriptors.append(descriptor)
        diff_ids.append(diff_id)
    config = {
        "created": CREATED,
        **AMD64.as_json(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": add_blob(layout, canonical_json(config), OCI_CONFIG),
        "layers": descriptors,
    }
    tag_in_index(layout, add_blob(layout, canonical_json(manifest), manifest["mediaType"]), name)


def toc_bombs(layout: Path) -> tuple[Path, Path]:
    """A gzip member and a zstd frame that inflate to 1 GiB (`toc_bomb`), beside the layout."""
    return layout.parent / "toc-bomb.gz", layout.parent / "toc-bomb.zst"


def hostile_layout(cache: Path) -> Path:
    """The layout holding every case, tagged by case name (read-only: copy before writing)."""
    root = cache / "hostiletars" / RECIPE
    root.mkdir(parents=True, exist_ok=True)
    layout = root / "layout"
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "done").exists():
            return layout
        shutil.rmtree(layout, ignore_errors=True)
        init_layout(layout)
        for name, case in CASES.items():
            _build_case(layout, name, case)
        gz, zst = toc_bombs(layout)
        _compress(gz, toc_bomb(), "gzip")
        _compress(zst, toc_bomb(), "zstd")
        (root / "done").write_text(json.dumps(sorted(CASES)))
    return layout
