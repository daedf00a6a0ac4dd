"""A format-neutral model of an image's filesystem, for comparing converted images with their source.

Every format reader produces an `FsTree`; the source image's tree comes from applying its OCI layer
tars in order (`tree_from_layers`), and a tree extracted to disk (e.g. by `fsck.erofs --extract`)
comes from `tree_from_directory`. `diff_trees` lists the differences in a readable form.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import marshal
import os
import re
import sqlite3
import stat
import tarfile
import tempfile
import weakref
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
    """Paths mapped to inodes; several paths share an inode when they are hardlinks.

    Held in an SQLite database in a temp file (0600, removed by `close` or when the tree is
    collected), through a bounded page cache: a tree of a million paths costs a few MB of memory.
    Paths are stored as UTF-8 bytes (surrogate-escaped), so they sort as `sorted` sorts them.
    """

    def __init__(self, directory: Path | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix="fstree-", suffix=".db", dir=directory)
        os.close(fd)
        self._db = sqlite3.connect(name, isolation_level=None, check_same_thread=False)
        self._finalizer = weakref.finalize(self, _drop_database, self._db, name)
        for pragma in _PRAGMAS:
            self._db.execute(pragma)
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")  # one transaction, never committed: nothing outlives the tree
        self._next_inode = itertools.count(1)
        self._known_dirs: set[bytes] = set()  # existing directories, forgotten on any removal
        self._pending_inodes: list[tuple[int, bytes]] = []
        self._insert_inode(_ROOT, Node(kind="dir", mode=0o755))
        self._layer: LayerPaths | None = None

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> FsTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def nodes(self) -> dict[str, Node]:
        return dict(self.items())

    def __contains__(self, path: str) -> bool:
        return self._lookup(_key(path)) is not None

    def __getitem__(self, path: str) -> Node:
        self._flush_inodes()
        row = self._db.execute(
            "SELECT i.node FROM paths p JOIN inodes i ON i.ino = p.ino WHERE p.path = ?", (_key(path),)
        ).fetchone()
        if row is None:
            raise KeyError(path)
        return _decode(row[0])

    def __len__(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM paths").fetchone()[0]
        return count

    def paths(self) -> list[str]:
        return [_path(key) for (key,) in self._db.execute("SELECT path FROM paths ORDER BY path")]

    def items(self) -> Iterator[tuple[str, Node]]:
        """(path, node) in path order, streamed."""
        for key, blob in self._records():
            yield _path(key), _decode(blob)

    def _records(self) -> Iterator[tuple[bytes, bytes]]:
        """(path, encoded node) in path order, streamed; equal encodings are equal nodes."""
        self._flush_inodes()
        return iter(
            self._db.execute(
                "SELECT p.path, i.node FROM paths p JOIN inodes i ON i.ino = p.ino ORDER BY p.path"
            )
        )

    def hardlink_groups(self) -> set[frozenset[str]]:
        """Groups of two or more paths that share one inode."""
        rows = self._db.execute(
            "SELECT ino, path FROM paths WHERE ino IN "
            "(SELECT ino FROM paths GROUP BY ino HAVING count(*) > 1) ORDER BY ino"
        )
        return {
            frozenset(_path(key) for _, key in group)
            for _, group in itertools.groupby(rows, key=lambda r: r[0])
        }

    def layer_paths(self) -> LayerPaths:
        """An empty set of the paths a new layer adds (for `add`, `link` and `apply_whiteout`);
        it replaces the previous layer's."""
        self._layer = LayerPaths(self._db)
        return self._layer

    def add(self, path: str, node: Node, layer: Container[str] | None = None) -> None:
        """Create or replace `path`. A directory replacing a directory keeps its children.

        `layer` holds the paths the current layer has added so far: a missing parent directory
        then replaces a lower layer's non-directory (see `_ensure_parents`).
        """
        path = normalize(path)
        key = _key(path)
        # parents first: an existing path has them all, as directories
        self._ensure_parents(path, layer)
        if self._insert_inode(key, node):
            return
        ino, is_dir = self._lookup(key) or (0, False)
        if node.kind == "dir" and is_dir:
            self._pending_inodes.append((ino, _encode(node)))
            return
        self.remove(path)
        if key == _ROOT:  # a root that is no directory (remove keeps the root)
            self._db.execute("DELETE FROM paths WHERE path = ?", (key,))
        self._insert_inode(key, node)

    def link(self, path: str, target: str, layer: Container[str] | None = None) -> None:
        """Make `path` another name of `target`'s inode (`layer` as for `add`)."""
        path, target = normalize(path), normalize(target)
        found = self._lookup(_key(target))
        if found is None:
            raise FormatError(f"hardlink {path} points to missing {target}")
        ino, is_dir = found
        if target == path or target.startswith(path + "/"):
            raise FormatError(f"hardlink {path} would replace its own target {target}")
        if path in self:
            self.remove(path)
        self._ensure_parents(path, layer)
        self._db.execute("INSERT INTO paths (path, ino, is_dir) VALUES (?, ?, ?)", (_key(path), ino, is_dir))

    def remove(self, path: str) -> None:
        """Remove `path` and everything below it (no error when absent)."""
        self._remove_key(_key(normalize(path)))

    def _remove_key(self, key: bytes) -> None:
        self._known_dirs.clear()
        if key != _ROOT:
            self._db.execute("DELETE FROM paths WHERE path = ?", (key,))
        self._db.execute("DELETE FROM paths WHERE path > ? AND path < ?", _below(key))

    def apply_whiteout(self, path: str, added_in_layer: LayerPaths) -> bool:
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
            self._remove_unadded_children(directory, added_in_layer)
            return True
        hidden = os.path.join(directory, base[len(WHITEOUT_PREFIX) :])
        if hidden not in added_in_layer:
            self.remove(hidden)
        return True

    def _remove_unadded_children(self, directory: str, added_in_layer: LayerPaths) -> None:
        """Remove every child of `directory` (with what is below it) that this layer did not add."""
        added_in_layer.flush()
        db = self._db
        db.execute("DELETE FROM doomed")
        db.execute(
            "INSERT INTO doomed SELECT path FROM paths WHERE path > ? AND path < ? "
            "AND path NOT IN (SELECT path FROM layer)",
            _below(_key(directory)),
        )
        for (key,) in db.execute("SELECT path FROM doomed"):
            self._remove_key(key)
        db.execute("DELETE FROM doomed")

    def _lookup(self, key: bytes) -> tuple[int, bool] | None:
        """(inode, is a directory) of the path `key`, None when absent."""
        row = self._db.execute("SELECT ino, is_dir FROM paths WHERE path = ?", (key,)).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def _insert_inode(self, key: bytes, node: Node) -> bool:
        """Give the new path `key` a new inode; False (nothing done) when `key` exists."""
        ino = next(self._next_inode)
        is_dir = node.kind == "dir"
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO paths (path, ino, is_dir) VALUES (?, ?, ?)", (key, ino, is_dir)
        )
        if inserted.rowcount != 1:
            return False
        self._pending_inodes.append((ino, _encode(node)))
        if len(self._pending_inodes) >= _BATCH:
            self._flush_inodes()
        if is_dir:
            self._remember_dir(key)
        return True

    def _flush_inodes(self) -> None:
        """Write the inodes added since the last flush (an inode's kind never changes: the
        paths table holds whether it is a directory, so only reads of nodes need this)."""
        self._db.executemany("INSERT OR REPLACE INTO inodes (ino, node) VALUES (?, ?)", self._pending_inodes)
        self._pending_inodes.clear()

    def _remember_dir(self, key: bytes) -> None:
        if len(self._known_dirs) >= _KNOWN_DIRS:
            self._known_dirs.clear()
        self._known_dirs.add(key)

    def _ensure_parents(self, path: str, layer: Container[str] | None) -> list[str]:
        """Create the missing parent directories of `path`; the directories created.

        Runtimes unpack each layer onto an empty directory and stack the layers (overlayfs): a
        directory a layer implies hides a lower layer's non-directory of that name, whatever a
        lower symlink points to. Within one layer a non-directory parent is an error.
        """
        parent = os.path.dirname(path)
        if _key(parent) in self._known_dirs:
            return []
        missing: list[str] = []
        while (found := self._lookup(_key(parent))) is None:
            missing.append(parent)
            parent = os.path.dirname(parent)
        if not found[1]:
            if layer is None or parent in layer:
                raise FormatError(f"{path}: parent {parent} is not a directory")
            self.remove(parent)
            missing.append(parent)
        else:
            self._remember_dir(_key(parent))
        for directory in reversed(missing):
            self._insert_inode(_key(directory), Node(kind="dir", mode=0o755))
        return missing


class LayerPaths:
    """The paths one layer has added so far, in the tree's database; recent additions are
    buffered and written in batches."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._pending: set[bytes] = set()
        db.execute("DELETE FROM layer")

    def add(self, path: str) -> None:
        self._pending.add(_key(path))
        if len(self._pending) >= _BATCH:
            self.flush()

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        key = _key(path)
        if key in self._pending:
            return True
        return self._db.execute("SELECT 1 FROM layer WHERE path = ?", (key,)).fetchone() is not None

    def flush(self) -> None:
        self._db.executemany("INSERT OR IGNORE INTO layer (path) VALUES (?)", ((k,) for k in self._pending))
        self._pending.clear()


_ROOT = b"/"
_BATCH = 4096
_KNOWN_DIRS = 4096
_PRAGMAS = (
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    "PRAGMA temp_store = FILE",
    "PRAGMA cache_size = -4096",  # KiB: the pages beyond these stay on disk
)
_SCHEMA = """
CREATE TABLE inodes (ino INTEGER PRIMARY KEY, node BLOB NOT NULL);
CREATE TABLE paths (path BLOB PRIMARY KEY, ino INTEGER NOT NULL, is_dir INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE layer (path BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE doomed (path BLOB PRIMARY KEY) WITHOUT ROWID;
"""


def _drop_database(db: sqlite3.Connection, name: str) -> None:
    db.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _key(path: str) -> bytes:
    return path.encode("utf-8", "surrogatepass")


def _path(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


def _below(key: bytes) -> tuple[bytes, bytes]:
    """Exclusive bounds of the keys of the paths strictly below `key`."""
    prefix = key if key == _ROOT else key + b"/"
    return prefix, prefix[:-1] + b"0"  # "0" follows "/"


def _encode(node: Node) -> bytes:
    digest: str | bytes = node.digest
    if len(node.digest) == 64 and _HEX.fullmatch(node.digest):
        digest = bytes.fromhex(node.digest)
    xattrs = dict(node.xattrs) if node.xattrs else None
    return marshal.dumps(
        (
            node.kind,
            node.mode,
            node.uid,
            node.gid,
            node.size,
            digest,
            node.target,
            node.rdev,
            xattrs,
            node.mtime,
        )
    )


def _decode(blob: bytes) -> Node:
    kind, mode, uid, gid, size, digest, target, rdev, xattrs, mtime = marshal.loads(blob)
    return Node(
        kind=kind,
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        digest=digest.hex() if isinstance(digest, bytes) else digest,
        target=target,
        rdev=rdev,
        xattrs=_NO_XATTRS if xattrs is None else xattrs,
        mtime=mtime,
    )


_HEX = re.compile("[0-9a-f]{64}")


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
    added_here = tree.layer_paths()
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


def _apply_entry(
    tree: FsTree, archive: tarfile.TarFile, info: tarfile.TarInfo, added_here: LayerPaths
) -> None:
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


def diff_trees(
    expected: FsTree, actual: FsTree, *, ignore_fields: Iterable[str] = (), mtime_tolerance: int = 0
) -> list[str]:
    """Readable differences between two trees; an empty list when they are equal.

    `ignore_fields` names `Node` fields a format does not keep (e.g. `mtime` on directories
    is never compared when listed here). With an `mtime_tolerance`, mtimes may differ by that
    many seconds; the mtimes that differ more are listed last.
    """
    ignored = set(ignore_fields)
    unknown = ignored - set(NODE_FIELDS)
    if unknown:
        raise ValueError(f"unknown Node fields: {sorted(unknown)}")
    tolerant = bool(mtime_tolerance) and "mtime" not in ignored
    compared = [name for name in NODE_FIELDS if name not in ignored and not (tolerant and name == "mtime")]
    missing: list[str] = []
    unexpected: list[str] = []
    differences: list[str] = []
    mtimes: list[str] = []
    for key, left_blob, right_blob in _merge(expected._records(), actual._records()):
        path = _path(key)
        if right_blob is None:
            missing.append(f"missing: {path}")
        elif left_blob is None:
            unexpected.append(f"unexpected: {path}")
        elif left_blob != right_blob and (left := _decode(left_blob)) != (right := _decode(right_blob)):
            for name in compared:
                before, after = getattr(left, name), getattr(right, name)
                if before != after:
                    differences.append(f"{path}: {name} {before!r} != {after!r}")
            if tolerant and abs(left.mtime - right.mtime) > mtime_tolerance:
                mtimes.append(f"{path}: mtime {left.mtime} != {right.mtime}")
    want_links, have_links = expected.hardlink_groups(), actual.hardlink_groups()
    differences += [f"hardlinks missing: {sorted(group)}" for group in want_links - have_links]
    differences += [f"hardlinks unexpected: {sorted(group)}" for group in have_links - want_links]
    return missing + unexpected + differences + mtimes


_Records = Iterator[tuple[bytes, bytes]]


def _merge(left: _Records, right: _Records) -> Iterator[tuple[bytes, bytes | None, bytes | None]]:
    """Two path-ordered record streams side by side: (path, left node or None, right node or None)."""
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            yield a[0], a[1], None
            a = next(left, None)
        elif a is None or b[0] < a[0]:
            yield b[0], None, b[1]
            b = next(right, None)
        else:
            yield a[0], a[1], b[1]
            a, b = next(left, None), next(right, None)
