"""A format-neutral model of an image's filesystem, for comparing converted images with their source.

Every format reader produces an `FsTree`; the source image's tree comes from applying its OCI layer
tars in order (`tree_from_layers`), and a tree extracted to disk (e.g. by `fsck.erofs --extract`)
comes from `tree_from_directory`. `diff_trees` lists the differences in a readable form.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import stat
import tarfile
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO

from acceld.formats.driver import FormatError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_READ_SIZE = 1 << 20


_NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Node:
    """One inode's attributes. `digest` is the sha256 hex of a regular file's content.

    Compact (slots, one shared empty xattr map): trees of a million paths are held in memory.
    """

    kind: str  # "dir" | "reg" | "symlink" | "char" | "block" | "fifo"
    mode: int  # permission bits including setuid/setgid/sticky (0o7777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    digest: str = ""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: Mapping[str, bytes] = field(default_factory=lambda: _NO_XATTRS)
    mtime: int = 0

    def __post_init__(self) -> None:
        if not self.xattrs and self.xattrs is not _NO_XATTRS:
            object.__setattr__(self, "xattrs", _NO_XATTRS)


NODE_FIELDS = tuple(f.name for f in fields(Node))


class FsTree:
    """Paths mapped to inodes; several paths share an inode when they are hardlinks."""

    def __init__(self) -> None:
        self._inode_of: dict[str, int] = {}
        self._inodes: dict[int, Node] = {}
        self._next_inode = itertools.count(1)
        root = next(self._next_inode)
        self._inode_of["/"] = root
        self._inodes[root] = Node(kind="dir", mode=0o755)

    @property
    def nodes(self) -> dict[str, Node]:
        return {path: self._inodes[ino] for path, ino in sorted(self._inode_of.items())}

    def __contains__(self, path: str) -> bool:
        return path in self._inode_of

    def __getitem__(self, path: str) -> Node:
        return self._inodes[self._inode_of[path]]

    def paths(self) -> list[str]:
        return sorted(self._inode_of)

    def hardlink_groups(self) -> set[frozenset[str]]:
        """Groups of two or more paths that share one inode."""
        ordered = sorted(self._inode_of.values())  # no set per inode: a tree may hold a million
        shared = {ino for ino, following in itertools.pairwise(ordered) if ino == following}
        by_inode: dict[int, set[str]] = {}
        for path, ino in self._inode_of.items():
            if ino in shared:
                by_inode.setdefault(ino, set()).add(path)
        return {frozenset(group) for group in by_inode.values()}

    def add(self, path: str, node: Node, layer: Container[str] | None = None) -> None:
        """Create or replace `path`. A directory replacing a directory keeps its children.

        `layer` holds the paths the current layer has added so far: a missing parent directory
        then replaces a lower layer's non-directory (see `_ensure_parents`).
        """
        path = normalize(path)
        existing = self._inode_of.get(path)
        if existing is not None and not (node.kind == "dir" and self._inodes[existing].kind == "dir"):
            self.remove(path)
            existing = None
        self._ensure_parents(path, layer)
        ino = existing if existing is not None else next(self._next_inode)
        self._inode_of[path] = ino
        self._inodes[ino] = node

    def link(self, path: str, target: str, layer: Container[str] | None = None) -> None:
        """Make `path` another name of `target`'s inode (`layer` as for `add`)."""
        path, target = normalize(path), normalize(target)
        ino = self._inode_of.get(target)
        if ino is None:
            raise FormatError(f"hardlink {path} points to missing {target}")
        if target == path or target.startswith(path + "/"):
            raise FormatError(f"hardlink {path} would replace its own target {target}")
        if path in self._inode_of:
            self.remove(path)
        self._ensure_parents(path, layer)
        self._inode_of[path] = ino

    def remove(self, path: str) -> None:
        """Remove `path` and everything below it (no error when absent)."""
        path = normalize(path)
        if path == "/":
            for child in self.children_recursive("/"):
                self._unlink(child)
            return
        for victim in [path, *self.children_recursive(path)]:
            self._unlink(victim)

    def apply_whiteout(self, path: str, added_in_layer: set[str]) -> bool:
        """Apply `path` if it is an OCI whiteout or opaque marker of a layer; False for a real entry.

        Whiteouts only hide lower layers: paths in `added_in_layer` (this layer's entries so far,
        updated here) survive them. Like any entry, a whiteout implies its parent directories
        (runtimes create them to hold it): they exist even if they hold nothing else.
        """
        directory, base = os.path.split(path)
        if base != OPAQUE_MARKER and not base.startswith(WHITEOUT_PREFIX):
            return False
        self._ensure_parents(path, added_in_layer)
        # the layer holds the marker's directories, so a whiteout of one of them in the same layer
        # (before or after the marker) does not hide it
        parent = directory
        while parent != "/":
            added_in_layer.add(parent)
            parent = os.path.dirname(parent)
        if base == OPAQUE_MARKER:
            for child in self.children_recursive(directory):
                if child not in added_in_layer:
                    self.remove(child)
            return True
        hidden = os.path.join(directory, base[len(WHITEOUT_PREFIX) :])
        if hidden not in added_in_layer:
            self.remove(hidden)
        return True

    def children_recursive(self, path: str) -> list[str]:
        prefix = "/" if path == "/" else path + "/"
        return [p for p in self._inode_of if p.startswith(prefix) and p != "/"]

    def _unlink(self, path: str) -> None:
        ino = self._inode_of.pop(path, None)
        if ino is not None and ino not in self._inode_of.values():
            del self._inodes[ino]

    def _ensure_parents(self, path: str, layer: Container[str] | None) -> list[str]:
        """Create the missing parent directories of `path`; the directories created.

        Runtimes unpack each layer onto an empty directory and stack the layers (overlayfs): a
        directory a layer implies hides a lower layer's non-directory of that name, whatever a
        lower symlink points to. Within one layer a non-directory parent is an error.
        """
        parent = os.path.dirname(path)
        missing: list[str] = []
        while parent not in self._inode_of:
            missing.append(parent)
            parent = os.path.dirname(parent)
        if self._inodes[self._inode_of[parent]].kind != "dir":
            if layer is None or parent in layer:
                raise FormatError(f"{path}: parent {parent} is not a directory")
            self.remove(parent)
            missing.append(parent)
        for directory in reversed(missing):
            self._inode_of[directory] = ino = next(self._next_inode)
            self._inodes[ino] = Node(kind="dir", mode=0o755)
        return missing


def normalize(path: str) -> str:
    """Absolute, without `.` components or a trailing slash: `./a/b/` → `/a/b`."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FormatError(f"path escapes the root: {path!r}")
    return "/" + "/".join(parts)


def tarinfo_xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    return {
        key[len(_XATTR_PAX_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(_XATTR_PAX_PREFIX)
    }


_EMPTY_DIGEST = hashlib.sha256().hexdigest()


def _hash_stream(stream: IO[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(_READ_SIZE):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest() if size else _EMPTY_DIGEST  # one string for every empty file


def _node_from_tarinfo(info: tarfile.TarInfo, content: IO[bytes] | None) -> Node:
    base = Node(
        kind="",
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        xattrs=tarinfo_xattrs(info),
        mtime=int(info.mtime),
    )
    if info.isdir():
        return replace(base, kind="dir")
    if info.issym():
        return replace(base, kind="symlink", target=info.linkname)
    if info.ischr() or info.isblk():
        return replace(base, kind="char" if info.ischr() else "block", rdev=(info.devmajor, info.devminor))
    if info.isfifo():
        return replace(base, kind="fifo")
    if info.isreg():
        size, digest = _hash_stream(content) if content is not None else (0, _EMPTY_DIGEST)
        return replace(base, kind="reg", size=size, digest=digest)
    raise FormatError(f"{info.name}: unsupported tar entry type {info.type!r}")


def apply_layer_tar(tree: FsTree, stream: IO[bytes]) -> None:
    """Apply one uncompressed OCI layer tar to `tree`, honouring OCI whiteouts and opaque dirs.

    Whiteouts only hide lower layers: entries of this layer survive an opaque marker in any order.
    """
    added_here: set[str] = set()
    first = stream.read(tarfile.BLOCKSIZE)
    if not first:
        return  # a zero-length layer is empty, as Go's archive/tar (and so every runtime) reads it
    try:
        with tarfile.open(fileobj=_Prefixed(first, stream), mode="r|") as archive:
            while (info := archive.next()) is not None:
                vars(archive)["members"].clear()  # TarFile keeps every TarInfo it read otherwise
                _apply_entry(tree, archive, info, added_here)
    except tarfile.TarError as exc:
        raise FormatError(f"bad tar: {exc}") from exc


class _Prefixed(io.RawIOBase):
    """`stream` with `head`, already read from it, put back in front."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            taken = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(taken) :]
            return taken
        return self._stream.read(size)


def _apply_entry(tree: FsTree, archive: tarfile.TarFile, info: tarfile.TarInfo, added_here: set[str]) -> None:
    path = normalize(info.name)
    if tree.apply_whiteout(path, added_here):
        return
    if info.islnk():
        tree.link(path, info.linkname, added_here)
    else:
        content = archive.extractfile(info) if info.isreg() else None
        tree.add(path, _node_from_tarinfo(info, content), added_here)
    added_here.add(path)


def tree_from_layers(streams: Iterable[IO[bytes]]) -> FsTree:
    """The filesystem an OCI runtime sees after unpacking these uncompressed layer tars in order."""
    tree = FsTree()
    for stream in streams:
        apply_layer_tar(tree, stream)
    return tree


def _node_from_lstat(path: Path, st: os.stat_result) -> Node:
    base = Node(kind="", mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime))
    if stat.S_ISLNK(st.st_mode):
        return replace(base, kind="symlink", target=os.readlink(path))
    names = os.listxattr(path, follow_symlinks=False)
    base = replace(base, xattrs={name: os.getxattr(path, name, follow_symlinks=False) for name in names})
    if stat.S_ISDIR(st.st_mode):
        return replace(base, kind="dir")
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            size, digest = _hash_stream(handle)
        return replace(base, kind="reg", size=size, digest=digest)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
        return replace(base, kind=kind, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    if stat.S_ISFIFO(st.st_mode):
        return replace(base, kind="fifo")
    raise FormatError(f"{path}: unsupported file type")


def tree_from_directory(root: Path) -> FsTree:
    """The tree of an extracted filesystem (lstat, xattrs, hardlinks by inode number)."""
    tree = FsTree()
    first_path_of_inode: dict[tuple[int, int], str] = {}
    tree.add("/", _node_from_lstat(root, root.lstat()))
    for path in _walk(root):
        st = path.lstat()
        name = "/" + path.relative_to(root).as_posix()
        key = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in first_path_of_inode:
            tree.link(name, first_path_of_inode[key])
            continue
        first_path_of_inode.setdefault(key, name)
        tree.add(name, _node_from_lstat(path, st))
    return tree


def _walk(root: Path) -> Iterator[Path]:
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        yield path
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path)


def diff_trees(expected: FsTree, actual: FsTree, *, ignore_fields: Iterable[str] = ()) -> list[str]:
    """Readable differences between two trees; an empty list when they are equal.

    `ignore_fields` names `Node` fields a format does not keep (e.g. `mtime` on directories
    is never compared when listed here).
    """
    ignored = set(ignore_fields)
    unknown = ignored - set(NODE_FIELDS)
    if unknown:
        raise ValueError(f"unknown Node fields: {sorted(unknown)}")
    differences: list[str] = []
    differences += [f"missing: {path}" for path in expected.paths() if path not in actual]
    differences += [f"unexpected: {path}" for path in actual.paths() if path not in expected]
    for path in expected.paths():  # sorted names, not a sorted copy of the whole tree
        if path not in actual:
            continue
        for name in NODE_FIELDS:
            left, right = getattr(expected[path], name), getattr(actual[path], name)
            if name not in ignored and left != right:
                differences.append(f"{path}: {name} {left!r} != {right!r}")
    want_links, have_links = expected.hardlink_groups(), actual.hardlink_groups()
    differences += [f"hardlinks missing: {sorted(group)}" for group in want_links - have_links]
    differences += [f"hardlinks unexpected: {sorted(group)}" for group in have_links - want_links]
    return differences
