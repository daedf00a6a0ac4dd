"""Deterministic test layer tars with every tar entry type a real image can carry.

`write_edge_lower` is a base layer; `write_edge_upper` goes on top of it with whiteouts, an opaque
directory and a modified hardlinked file. Both write uncompressed PAX tars.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

MTIME = 1_700_000_000
LONG_DIR = "deep/" + "/".join(f"level-{i:02d}-" + "d" * 40 for i in range(6))


def _pattern(seed: str, size: int) -> bytes:
    """Deterministic content that compresses moderately (repeats every 32 KiB)."""
    block = b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(1024))
    return (block * (size // len(block) + 1))[:size]


class _TarWriter:
    def __init__(self, archive: tarfile.TarFile) -> None:
        self.archive = archive

    def add(
        self,
        name: str,
        kind: bytes = tarfile.REGTYPE,
        data: bytes = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        linkname: str = "",
        dev: tuple[int, int] = (0, 0),
        xattrs: dict[str, bytes] | None = None,
        mtime: int = MTIME,
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname, info.gname = ("root", "root") if uid == 0 else ("", "")
        info.mtime = mtime
        info.linkname = linkname
        info.devmajor, info.devminor = dev
        if xattrs:
            info.pax_headers = {
                f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                for key, value in xattrs.items()
            }
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            self.archive.addfile(info, io.BytesIO(data))
        else:
            self.archive.addfile(info)

    def directory(self, name: str, mode: int = 0o755, **kwargs: object) -> None:
        self.add(name, tarfile.DIRTYPE, mode=mode, **kwargs)  # type: ignore[arg-type]


def write_edge_lower(path: Path, chunk_size: int = 4 << 20) -> Path:
    """A base layer with every entry type, odd names and chunk-boundary file sizes."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        t = _TarWriter(archive)
        t.directory("etc")
        t.add("etc/hostname", data=b"edge\n")
        t.add("etc/empty", data=b"")
        t.directory("bin", mode=0o755)
        t.add("bin/setuid", data=b"#!/bin/sh\necho setuid\n", mode=0o4755)
        t.add("bin/setgid", data=b"#!/bin/sh\necho setgid\n", mode=0o2755, gid=50)
        t.directory("tmp", mode=0o1777)
        t.directory("data", uid=1000, gid=1000)
        t.add("data/exact-chunk", data=_pattern("exact", chunk_size), uid=1000, gid=1000)
        t.add("data/chunk-plus-one", data=_pattern("plus", chunk_size + 1))
        t.add("data/multi-chunk", data=_pattern("multi", 2 * chunk_size + 12345))
        t.add("data/zeros", data=b"\0" * (3 * 65536 + 17))
        t.add("data/small", data=b"small file\n", mode=0o600, uid=65534, gid=65534)
        t.add("data/one-byte", data=b"x")
        t.add("data/same-as-small", data=b"small file\n")
        t.add(
            "data/hardlink-same-dir", tarfile.LNKTYPE, linkname="data/small", mode=0o600, uid=65534, gid=65534
        )
        t.directory("links")
        t.add(
            "links/hardlink-other-dir",
            tarfile.LNKTYPE,
            linkname="data/small",
            mode=0o600,
            uid=65534,
            gid=65534,
        )
        t.add("links/shared-base", data=b"shared by two names\n")
        t.add("links/shared-alias", tarfile.LNKTYPE, linkname="links/shared-base")
        t.add("links/relative", tarfile.SYMTYPE, linkname="../etc/hostname", mode=0o777)
        t.add("links/absolute", tarfile.SYMTYPE, linkname="/etc/hostname", mode=0o777)
        t.add("links/dangling", tarfile.SYMTYPE, linkname="does/not/exist", mode=0o777)
        t.add("links/long-target", tarfile.SYMTYPE, linkname="/" + "t" * 150, mode=0o777)
        t.directory("dev")
        t.add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        t.add("dev/loop7", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 7))
        t.add("dev/pipe", tarfile.FIFOTYPE, mode=0o644)
        t.directory("xattrs", xattrs={"user.dir": b"on a directory"})
        t.add("xattrs/file", data=b"with xattrs\n", xattrs={"user.foo": b"bar", "user.bin": b"\x00\x01\xfe"})
        t.add("xattrs/empty-value", data=b"x\n", xattrs={"user.empty": b""})
        t.directory("names")
        t.add("names/" + "n" * 120, data=b"name longer than 100 bytes\n")
        t.add("names/ünïcødé-名前.txt", data=b"non-ASCII name\n")
        t.add('names/spaces and "quotes" & <tags>', data=b"odd characters\n")
        t.directory("deep")
        parts = LONG_DIR.split("/")
        for depth in range(2, len(parts) + 1):
            t.directory("/".join(parts[:depth]))
        t.add(LONG_DIR + "/file-behind-a-path-longer-than-255-bytes", data=b"deep\n")
        t.directory("replace-me")
        t.add("replace-me/old", data=b"old\n")
        t.directory("opaque")
        t.add("opaque/lower-only", data=b"hidden by the upper layer\n")
        t.directory("opaque/sub")
        t.add("opaque/sub/lower-too", data=b"also hidden\n")
        t.add("whiteout-me", data=b"removed by the upper layer\n")
        t.directory("whiteout-dir")
        t.add("whiteout-dir/inner", data=b"removed with its directory\n")
    return path


def write_edge_upper(path: Path) -> Path:
    """An upper layer for `write_edge_lower`: whiteouts, an opaque dir, a modified hardlinked file."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        t = _TarWriter(archive)
        t.add(".wh.whiteout-me", mode=0)
        t.add(".wh.whiteout-dir", mode=0)
        t.directory("opaque", mode=0o750)
        t.add("opaque/.wh..wh..opq", mode=0)
        t.add("opaque/upper-only", data=b"new in the upper layer\n")
        t.directory("data", uid=1000, gid=1000)
        t.add("data/small", data=b"small file, modified above\n", mode=0o640, uid=65534, gid=65534)
        t.add("data/new-in-upper", data=_pattern("upper", 70_000))
        t.directory("replace-me")
        t.add("replace-me/.wh.old", mode=0)
        t.add("replace-me/new", data=b"new\n")
        t.add("etc/hostname", data=b"edge-upper\n", mtime=MTIME + 60)
    return path


def write_small_files(
    path: Path,
    count: int,
    body: Callable[[int], bytes] = lambda number: b"%d\n" % number,
    tar_format: int = tarfile.GNU_FORMAT,
) -> Path:
    """A layer of `count` small files `dNNNN/fNNN`, a thousand per directory (implied, no entries)."""
    with tarfile.open(path, "w", format=tar_format) as archive:
        for number in range(count):
            info = tarfile.TarInfo(f"d{number // 1000:04d}/f{number % 1000:03d}")
            data = body(number)
            info.size, info.mtime = len(data), MTIME
            archive.addfile(info, io.BytesIO(data))
    return path
