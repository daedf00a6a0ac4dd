"""Small layer tars, each exercising one oddity found in real-world images.

Every case is a function `(workdir) -> [layer tar, ...]` (bottom first) registered in `CASES`.
Where a real tool writes the oddity (GNU tar's ././@LongLink and sparse maps, `git archive`'s
PAX global header, bsdtar), the tar comes from that tool; the rest are written byte-exactly with
`tarfile`, which is how the odd ones are produced in the wild too (hand-rolled image builders).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from harness.tars import MTIME

Case = Callable[[Path], list[Path]]
CASES: dict[str, Case] = {}


def case(function: Case) -> Case:
    CASES[function.__name__] = function
    return function


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attributes: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = MTIME
    info.uname = info.gname = "root"
    for key, value in attributes.items():
        setattr(info, key, value)
    return info


Entry = tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]


def _write(path: Path, entries: list[Entry], fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8") -> Path:
    with tarfile.open(path, "w", format=fmt, encoding=encoding) as archive:
        for entry in entries:
            if isinstance(entry, tuple):
                info, data = entry
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(entry)
    return path


def _file(name: str, data: bytes = b"", **attributes: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, **attributes), data


def _dir(name: str, **attributes: object) -> tarfile.TarInfo:
    return _info(name, tarfile.DIRTYPE, **attributes)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    return _info(name, tarfile.LNKTYPE, linkname=target)


def _whiteout(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return _file(name, mode=0)


def _gnu_tar(workdir: Path, tree: Path, out: Path, *options: str) -> Path:
    """GNU tar over `tree` with reproducible owners and mtimes (names come out as `./x`)."""
    subprocess.run(
        [
            "tar",
            *options,
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            f"--mtime=@{MTIME}",
            "--sort=name",
            "-C",
            str(tree),
            "-cf",
            str(out),
            ".",
        ],
        check=True,
        cwd=workdir,
    )
    return out


def _sample_tree(root: Path) -> Path:
    """A directory with long names, a long symlink target, a hardlink with a long name."""
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(b"long name\n")
    os.link(long_dir / ("f" * 120), root / ("h" * 110))
    os.symlink("/" + "t" * 200, root / "long-symlink")
    (root / "short").write_bytes(b"short\n")
    os.chmod(root / "short", 0o4755)
    return root


# ---- files written by real tools ---------------------------------------------------------------


@case
def gnu_tar_longlink(workdir: Path) -> list[Path]:
    """GNU format: ././@LongLink entries for names and link targets over 100 bytes."""
    tree = _sample_tree(workdir / "tree")
    return [_gnu_tar(workdir, tree, workdir / "gnu.tar", "--format=gnu")]


@case
def gnu_tar_posix(workdir: Path) -> list[Path]:
    tree = _sample_tree(workdir / "tree")
    return [_gnu_tar(workdir, tree, workdir / "posix.tar", "--format=posix")]


@case
def gnu_tar_ustar(workdir: Path) -> list[Path]:
    tree = workdir / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_bytes(b"hello\n")
    os.symlink("motd", tree / "etc" / "motd.link")
    return [_gnu_tar(workdir, tree, workdir / "ustar.tar", "--format=ustar")]


def _sparse_tree(root: Path) -> Path:
    root.mkdir()
    with (root / "sparse").open("wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek(7 << 20)
        f.write(b"tail")
    with (root / "all-hole").open("wb") as f:
        f.truncate(1 << 20)
    return root


@case
def gnu_tar_sparse_gnu(workdir: Path) -> list[Path]:
    """GNU sparse headers (type 'S') as `tar --sparse --format=gnu` writes them."""
    return [_gnu_tar(workdir, _sparse_tree(workdir / "tree"), workdir / "s.tar", "--sparse", "--format=gnu")]


@case
def gnu_tar_sparse_pax(workdir: Path) -> list[Path]:
    """PAX sparse 1.0 (GNU.sparse.* headers, map in the data) as `tar --sparse --format=posix` writes."""
    return [
        _gnu_tar(workdir, _sparse_tree(workdir / "tree"), workdir / "s.tar", "--sparse", "--format=posix")
    ]


@case
def git_archive_global_header(workdir: Path) -> list[Path]:
    """`git archive` starts with a PAX global header ('g') holding the commit id."""
    repo = workdir / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main.c").write_bytes(b"int main(void) { return 0; }\n")
    (repo / "README").write_bytes(b"readme\n")
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "GIT_AUTHOR_DATE": f"@{MTIME} +0000",
        "GIT_COMMITTER_DATE": f"@{MTIME} +0000",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
    }
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *command], cwd=repo, env=env, check=True)
    out = workdir / "git.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(out), "HEAD"], cwd=repo, env=env, check=True)
    return [out]


@case
def bsdtar_pax(workdir: Path) -> list[Path]:
    """libarchive's bsdtar (skipped by the test when not installed)."""
    bsdtar = shutil.which("bsdtar")
    if bsdtar is None:
        raise FileNotFoundError("bsdtar")
    tree = _sample_tree(workdir / "tree")
    out = workdir / "bsdtar.tar"
    subprocess.run(
        [
            bsdtar,
            "--format=pax",
            "--uid=0",
            "--gid=0",
            "--uname=root",
            "--gname=root",
            "-C",
            str(tree),
            "-cf",
            str(out),
            ".",
        ],
        check=True,
    )
    return [out]


# ---- names and paths ---------------------------------------------------------------------------


@case
def dot_slash_and_absolute_names(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _dir("./"),
                _dir("./etc"),
                _file("./etc/dotted", b"dot\n"),
                _dir("/abs"),
                _file("/abs/x", b"absolute\n"),
                _file("/etc/abs-in-dotted", b"mixed\n"),
            ],
        )
    ]


@case
def no_parent_directories(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _file("a/b/c/file", b"deep\n"),
                _symlink("x/y/link", "../../a"),
                _file("a/sibling", b"s\n"),
            ],
        )
    ]


@case
def latin1_names(workdir: Path) -> list[Path]:
    """Non-UTF-8 bytes in names and a symlink target (a ustar header with latin-1 bytes)."""
    return [
        _write(
            workdir / "l.tar",
            [
                _dir("caf\xe9"),
                _file("caf\xe9/na\xefve", b"latin-1\n"),
                _symlink("link-\xe9", "caf\xe9"),
            ],
            fmt=tarfile.GNU_FORMAT,
            encoding="latin-1",
        )
    ]


@case
def newline_backslash_names(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _file("with\nnewline", b"n\n"),
                _file("back\\slash", b"b\n"),
                _file("tab\there", b"t\n"),
                _symlink("link\nnl", "with\nnewline"),
            ],
        )
    ]


@case
def long_symlink_target(workdir: Path) -> list[Path]:
    return [_write(workdir / "l.tar", [_symlink("long", "/" + "/".join(["x" * 200] * 19))])]


@case
def many_entries_one_directory(workdir: Path) -> list[Path]:
    entries: list[Entry] = [_dir("many")]
    entries += [_file(f"many/file-{i:05d}", b"" if i % 2 else f"{i}\n".encode()) for i in range(5000)]
    return [_write(workdir / "l.tar", entries)]


@case
def deep_nesting(workdir: Path) -> list[Path]:
    parts = [f"d{i}" for i in range(120)]
    entries: list[Entry] = [_dir("/".join(parts[: i + 1])) for i in range(len(parts))]
    entries.append(_file("/".join(parts) + "/leaf", b"leaf\n"))
    return [_write(workdir / "l.tar", entries)]


# ---- links ---------------------------------------------------------------------------------------


@case
def hardlink_to_symlink(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _file("target", b"t\n"),
                _symlink("sym", "target"),
                _hardlink("sym-hardlink", "sym"),
            ],
        )
    ]


@case
def hardlink_to_device_and_fifo(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _dir("dev"),
                _info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
                _hardlink("dev/null-alias", "dev/null"),
                _info("dev/pipe", tarfile.FIFOTYPE),
                _hardlink("pipe-alias", "dev/pipe"),
            ],
        )
    ]


@case
def hardlink_chain_across_directories(workdir: Path) -> list[Path]:
    lower = _write(
        workdir / "lower.tar",
        [
            _dir("a"),
            _dir("b"),
            _dir("c"),
            _file("a/f", b"shared\n", mode=0o600, uid=7),
            _hardlink("b/g", "a/f"),
            _hardlink("c/h", "b/g"),
            _hardlink("top", "c/h"),
        ],
    )
    upper = _write(workdir / "upper.tar", [_dir("d"), _file("d/new", b"x\n"), _hardlink("d/link", "d/new")])
    return [lower, upper]


# ---- layering ------------------------------------------------------------------------------------


@case
def dir_replaced_by_file_and_back(workdir: Path) -> list[Path]:
    lower = _write(
        workdir / "lower.tar",
        [
            _dir("was-dir"),
            _file("was-dir/child", b"c\n"),
            _file("was-file", b"f\n"),
        ],
    )
    upper = _write(
        workdir / "upper.tar",
        [
            _file("was-dir", b"now a file\n"),
            _dir("was-file"),
            _file("was-file/child", b"now a dir\n"),
        ],
    )
    return [lower, upper]


@case
def symlink_replaced_by_directory(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_dir("real"), _file("real/x", b"x\n"), _symlink("alias", "real")])
    upper = _write(workdir / "upper.tar", [_dir("alias", mode=0o700), _file("alias/own", b"own\n")])
    return [lower, upper]


@case
def whiteout_and_recreate_in_one_layer(workdir: Path) -> list[Path]:
    lower = _write(
        workdir / "lower.tar",
        [
            _dir("app"),
            _file("app/old", b"old\n"),
            _file("conf", b"old conf\n"),
        ],
    )
    upper = _write(
        workdir / "upper.tar",
        [
            _whiteout(".wh.app"),
            _dir("app", mode=0o700),
            _file("app/new", b"new\n"),
            _whiteout(".wh.conf"),
            _file("conf", b"new conf\n"),
        ],
    )
    return [lower, upper]


@case
def opaque_at_several_depths(workdir: Path) -> list[Path]:
    lower = _write(
        workdir / "lower.tar",
        [
            _dir("a"),
            _file("a/1", b"1\n"),
            _dir("a/b"),
            _file("a/b/2", b"2\n"),
            _dir("a/b/c"),
            _file("a/b/c/3", b"3\n"),
            _dir("x"),
            _file("x/keep", b"k\n"),
        ],
    )
    upper = _write(
        workdir / "upper.tar",
        [
            _dir("a"),
            _whiteout("a/.wh..wh..opq"),
            _dir("a/b"),
            _whiteout("a/b/.wh..wh..opq"),
            _dir("a/b/c"),
            _whiteout("a/b/c/.wh..wh..opq"),
            _file("a/b/c/new", b"new\n"),
            _dir("x/y"),
            _whiteout("x/y/.wh..wh..opq"),
        ],
    )
    return [lower, upper]


@case
def layer_of_only_whiteouts(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_dir("d"), _file("d/f", b"f\n"), _file("g", b"g\n")])
    upper = _write(workdir / "upper.tar", [_whiteout("d/.wh.f"), _whiteout(".wh.g")])
    return [lower, upper]


@case
def empty_layer_zero_blocks(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_file("f", b"f\n")])
    empty = workdir / "empty.tar"
    empty.write_bytes(b"\0" * 1024)
    return [lower, empty]


@case
def empty_layer_zero_length(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_file("f", b"f\n")])
    empty = workdir / "empty.tar"
    empty.write_bytes(b"")
    return [lower, empty]


@case
def duplicate_entries_in_one_layer(workdir: Path) -> list[Path]:
    """The same path twice in one tar (appended with `tar -r`): the last entry wins on extraction."""
    return [
        _write(
            workdir / "l.tar",
            [
                _file("dup", b"first\n"),
                _dir("d"),
                _file("dup", b"second, wins\n", mode=0o600),
                _dir("d", mode=0o700),
            ],
        )
    ]


# ---- attributes ----------------------------------------------------------------------------------


@case
def huge_and_nobody_ids(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _file("huge", b"h\n", uid=3_000_000_000, gid=1 << 22),
                _file("nobody", b"n\n", uid=65534, gid=65534),
                _dir("huge-dir", uid=1 << 21, gid=(1 << 21) + 1),
            ],
        )
    ]


@case
def odd_mtimes(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [
                _file("epoch", b"0\n", mtime=0),
                # 2242: past 32 bits, yet within what ext4 stores (fsck.erofs extracts onto the host)
                _file("far-future", b"f\n", mtime=1 << 33),
                _file("fractional", b".\n", mtime=1_700_000_000.75),
                _dir("dir-epoch", mtime=0),
            ],
        )
    ]


@case
def negative_mtime(workdir: Path) -> list[Path]:
    return [_write(workdir / "l.tar", [_file("before-epoch", b"-\n", mtime=-86400)])]


@case
def capability_and_symlink_xattrs(workdir: Path) -> list[Path]:
    capability = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep
    file_info, data = _file("ping", b"\x7fELF", mode=0o755)
    file_info.pax_headers = {
        "SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape")
    }
    link = _symlink("link", "ping")
    link.pax_headers = {"SCHILY.xattr.user.on-link": "v"}
    return [_write(workdir / "l.tar", [(file_info, data), link])]


# ---- structure -----------------------------------------------------------------------------------


@case
def go_style_mode_type_bits(workdir: Path) -> list[Path]:
    """Go's tar.FileInfoHeader (Docker, buildkit) puts the file type bits in the mode field
    (tarfile masks them, so the headers are patched)."""
    out = _write(
        workdir / "l.tar",
        [
            _dir("bin"),
            _file("bin/tool", b"#!/bin/sh\n", mode=0o4755),
            _symlink("bin/alias", "tool"),
            _info("bin/fifo", tarfile.FIFOTYPE),
        ],
        fmt=tarfile.USTAR_FORMAT,
    )
    data = bytearray(out.read_bytes())
    type_bits = {b"5": 0o40000, b"0": 0o100000, b"2": 0o120000, b"6": 0o10000}
    at = 0
    while data[at : at + 512] != bytes(512):
        header = data[at : at + 512]
        mode = int(header[100:107], 8) | type_bits[bytes(header[156:157])]
        data[at + 100 : at + 108] = b"%07o\0" % mode
        data[at + 148 : at + 156] = b" " * 8
        data[at + 148 : at + 156] = b"%06o\0 " % sum(data[at : at + 512])
        at += 512 + -(-int(header[124:135], 8) // 512) * 512
    out.write_bytes(bytes(data))
    return [out]


@case
def no_end_of_archive_blocks(workdir: Path) -> list[Path]:
    """A tar cut right after its last entry, without the two zero blocks (some streaming writers)."""
    full = _write(workdir / "full.tar", [_dir("d"), _file("d/f", b"no trailer\n")])
    data = full.read_bytes()
    out = workdir / "l.tar"
    out.write_bytes(data[: len(data.rstrip(b"\0")) + (-len(data.rstrip(b"\0")) % 512)])
    full.unlink()
    return [out]


@case
def directory_entry_after_its_children(workdir: Path) -> list[Path]:
    return [
        _write(
            workdir / "l.tar",
            [_file("late/child", b"c\n"), _dir("late/sub/inner"), _dir("late", mode=0o700, uid=5, gid=6)],
        )
    ]


@case
def root_entry_with_odd_attributes(workdir: Path) -> list[Path]:
    return [_write(workdir / "l.tar", [_dir("./", mode=0o700, uid=1, gid=2), _file("./f", b"f\n")])]


@case
def whiteouts_of_missing_paths(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_file("present", b"p\n")])
    upper = _write(
        workdir / "upper.tar",
        [
            _whiteout(".wh.never-existed"),
            _whiteout("no/such/dir/.wh.file"),
            _whiteout("ghost/.wh..wh..opq"),
            _file("present", b"kept\n"),
        ],
    )
    return [lower, upper]


@case
def opaque_marker_before_directory_entry(workdir: Path) -> list[Path]:
    lower = _write(workdir / "lower.tar", [_dir("o"), _file("o/old", b"old\n")])
    upper = _write(
        workdir / "upper.tar", [_whiteout("o/.wh..wh..opq"), _file("o/new", b"new\n"), _dir("o", mode=0o711)]
    )
    return [lower, upper]


@case
def gnu_base256_ids(workdir: Path) -> list[Path]:
    """GNU format stores ids beyond 8^7 as base-256 numbers in the header."""
    return [
        _write(
            workdir / "l.tar",
            [_file("big-ids", b"b\n", uid=1 << 30, gid=(1 << 21) + 5), _dir("d", uid=1 << 24)],
            fmt=tarfile.GNU_FORMAT,
        )
    ]


@case
def ustar_prefix_field(workdir: Path) -> list[Path]:
    """A 200-byte path split over the USTAR prefix and name fields (no extension header)."""
    directory = "/".join(["p" * 48] * 3)
    return [
        _write(workdir / "l.tar", [_file(directory + "/" + "n" * 50, b"prefix\n")], fmt=tarfile.USTAR_FORMAT)
    ]


def _xattr_tree(root: Path) -> Path:
    root.mkdir()
    (root / "tagged").write_bytes(b"x\n")
    os.setxattr(root / "tagged", "user.origin", b"real tool")
    os.setxattr(root / "tagged", "user.binary", b"\x00\xff")
    return root


@case
def gnu_tar_xattrs(workdir: Path) -> list[Path]:
    """GNU tar --xattrs (SCHILY.xattr PAX records)."""
    tree = _xattr_tree(workdir / "tree")
    return [
        _gnu_tar(workdir, tree, workdir / "x.tar", "--format=posix", "--xattrs", "--xattrs-include=user.*")
    ]


@case
def bsdtar_xattrs(workdir: Path) -> list[Path]:
    """bsdtar writes xattrs as LIBARCHIVE.xattr records (URL-encoded names, base64 values)."""
    bsdtar = shutil.which("bsdtar")
    if bsdtar is None:
        raise FileNotFoundError("bsdtar")
    tree = _xattr_tree(workdir / "tree")
    out = workdir / "bsdtar.tar"
    subprocess.run(
        [bsdtar, "--format=pax", "--xattrs", "--uid=0", "--gid=0", "-C", str(tree), "-cf", str(out), "."],
        check=True,
    )
    return [out]


@case
def selinux_and_overlay_xattrs(workdir: Path) -> list[Path]:
    """Labels from SELinux build hosts and overlayfs xattrs copied out of an upper directory."""
    labelled, data = _file("etc/labelled", b"l\n")
    labelled.pax_headers = {"SCHILY.xattr.security.selinux": "system_u:object_r:container_file_t:s0\0"}
    upper = _dir("upper")
    upper.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
    return [_write(workdir / "l.tar", [_dir("etc"), (labelled, data), upper])]


@case
def pax_vendor_records(workdir: Path) -> list[Path]:
    """PAX records readers must ignore: atime/ctime, libarchive and star vendor keys, a charset."""
    info, data = _file("f", b"vendor\n")
    info.pax_headers = {
        "atime": "1700000001.5",
        "ctime": "1700000002.25",
        "LIBARCHIVE.creationtime": "1600000000",
        "SCHILY.fflags": "nodump",
        "SCHILY.dev": "2049",
        "SCHILY.ino": "1234",
        "SCHILY.nlink": "1",
        "hdrcharset": "ISO-IR 10646 2000 UTF-8",
    }
    return [_write(workdir / "l.tar", [(info, data)])]


@case
def v7_regular_typeflag(workdir: Path) -> list[Path]:
    """Pre-POSIX tars mark regular files with a NUL type flag, directories by a trailing slash."""
    out = _write(workdir / "l.tar", [_dir("old/"), _file("old/file", b"v7\n")], fmt=tarfile.USTAR_FORMAT)
    data = bytearray(out.read_bytes())
    at = 0
    while data[at : at + 512] != bytes(512):
        data[at + 156] = 0
        data[at + 148 : at + 156] = b" " * 8
        data[at + 148 : at + 156] = b"%06o\0 " % sum(data[at : at + 512])
        at += 512 + -(-int(data[at + 124 : at + 135], 8) // 512) * 512
    out.write_bytes(bytes(data))
    return [out]


@case
def busybox_rootfs(workdir: Path) -> list[Path]:
    """An Alpine-like rootfs by GNU tar: one busybox binary hardlinked under every applet name
    across bin, sbin and usr, setuid, with an upper layer that replaces it (skipped without busybox)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise FileNotFoundError("busybox")
    tree = workdir / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copyfile(busybox, tree / "bin" / "busybox")
    os.chmod(tree / "bin" / "busybox", 0o4755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        link = tree / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(tree / "bin" / "busybox", link)
    for name in ("dev", "proc", "tmp", "etc"):
        (tree / name).mkdir()
    os.chmod(tree / "tmp", 0o1777)
    (tree / "etc" / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    lower = _gnu_tar(workdir, tree, workdir / "lower.tar", "--format=gnu")
    upper = _write(
        workdir / "upper.tar",
        [_dir("bin"), _file("bin/busybox", b"replaced\n", mode=0o755), _whiteout("usr/bin/.wh.wget")],
    )
    return [lower, upper]


@case
def permissionless_entries(workdir: Path) -> list[Path]:
    """Mode 000 files and a mode 000 directory with content (/etc/shadow, locked-down dirs)."""
    return [
        _write(
            workdir / "l.tar",
            [
                _file("shadow", b"root:*:1::::::\n", mode=0),
                _dir("locked", mode=0),
                _file("locked/inner", b"i\n"),
            ],
        )
    ]


@case
def image_of_one_empty_layer(workdir: Path) -> list[Path]:
    empty = workdir / "empty.tar"
    empty.write_bytes(b"\0" * 10240)  # what `tar -cf x.tar -T /dev/null` writes
    return [empty]


@case
def hardlinks_with_mixed_prefixes(workdir: Path) -> list[Path]:
    """Link targets spelled differently from the names they point to (`./a` vs `a` vs `/a`)."""
    return [
        _write(
            workdir / "l.tar",
            [_file("./a", b"a\n"), _hardlink("b", "a"), _hardlink("./c", "/a"), _hardlink("d", "./a")],
        )
    ]
