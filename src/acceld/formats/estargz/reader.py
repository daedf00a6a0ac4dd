"""An eStargz reader and verifier for `acceld check`, written independently from the writer.

`open_estargz` parses the footer and the TOC; `EstargzLayer.verify` then reads the blob once from
start to end, as consecutive gzip members, and checks: the TOC digest; that every recorded
`offset` is the start of a gzip member; every chunk's `chunkDigest` (honouring `innerOffset`);
that the decompressed stream is a tar whose entries are the TOC's entries in order, with the
recorded sizes, link targets and file `digest`s; and it measures the diff_id and uncompressed
size. `apply_to` adds the layer's files to an `FsTree` as a lazy-pulling snapshotter sees them
(TOC view, OCI whiteouts applied, landmarks hidden).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import io
import os
import posixpath
import re
import tarfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from isal import isal_zlib

from acceld.formats.driver import FormatError
from acceld.formats.estargz.tocstream import TOC_NAME, read_toc
from acceld.formats.fstree import FsTree, Node, normalize
from acceld.formats.limits import DEFAULT_LIMITS, Limits, exceeded
from acceld.formats.targuard import TarGuard

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
LANDMARK_NAMES = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
_READ_SIZE = 1 << 20
_MAX_SHARED = 1 << 16  # distinct values shared between nodes (mtimes may all differ)
_MAX_TOC_SIZE = 1 << 30
_TAR_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifyReport:
    toc_digest: str
    diff_id: str
    uncompressed_size: int
    entries: int
    chunks: int


@dataclass
class _Chunk:
    name: str
    offset: int
    inner_offset: int
    length: int
    digest: str
    start: int = -1  # position in the decompressed stream, known once its member is reached
    hasher: Any = field(default_factory=hashlib.sha256)
    done: int = 0


def _inflate_one_member(data: bytes, what: str, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, bytes]:
    """Decompress exactly one gzip member, at most `limits.max_metadata_bytes` of it;
    returns (content, bytes after the member)."""
    inflater = isal_zlib.decompressobj(31)
    try:
        content = inflater.decompress(data, limits.max_metadata_bytes + 1)
    except Exception as exc:  # isal_zlib.error
        raise FormatError(f"eStargz {what}: bad gzip data ({exc})") from None
    if len(content) > limits.max_metadata_bytes:
        raise exceeded(limits, "max_metadata_bytes", f"the eStargz {what} inflates to more bytes")
    if not inflater.eof:
        raise FormatError(f"eStargz {what}: gzip member is truncated")
    return content, inflater.unused_data


def _parse_footer(tail: bytes) -> tuple[int, int]:
    """(TOC offset, footer size) from the blob's last bytes; accepts the legacy 47-byte footer too."""
    for size, extra_prefix in ((FOOTER_SIZE, b"SG\x16\x00"), (LEGACY_FOOTER_SIZE, b"")):
        footer = tail[-size:]
        if len(footer) < size or footer[:4] != b"\x1f\x8b\x08\x04":
            continue
        extra_length = int.from_bytes(footer[10:12], "little")
        extra = footer[12 : 12 + extra_length]
        if extra_length != len(extra_prefix) + 22 or not extra.startswith(extra_prefix):
            continue
        payload = extra[len(extra_prefix) :]
        if not payload.endswith(b"STARGZ") or not re.fullmatch(rb"[0-9a-f]{16}", payload[:16]):
            continue
        content, rest = _inflate_one_member(footer, "footer")
        if content or rest:
            raise FormatError("eStargz footer: the footer member is not empty")
        return int(payload[:16], 16), size
    raise FormatError("not an eStargz blob: no eStargz footer at the end")


class EstargzLayer:
    """An eStargz blob with its footer and TOC parsed. `blob` must be seekable.

    The TOC's entries are kept in a temp file in `directory` (default: the system's) until `close`.
    """

    def __init__(
        self, blob: BinaryIO, limits: Limits = DEFAULT_LIMITS, directory: Path | None = None
    ) -> None:
        self._blob = blob
        self._limits = limits
        self.size = blob.seek(0, os.SEEK_END)
        blob.seek(max(0, self.size - FOOTER_SIZE))
        self.toc_offset, self.footer_size = _parse_footer(blob.read(FOOTER_SIZE))
        toc_end = self.size - self.footer_size
        if not 0 <= self.toc_offset < toc_end or toc_end - self.toc_offset > _MAX_TOC_SIZE:
            raise FormatError(f"eStargz footer: TOC offset {self.toc_offset} is outside the blob")
        self.toc_digest, self.entries = read_toc(blob, self.toc_offset, toc_end, limits, directory)

    def close(self) -> None:
        self.entries.close()

    def __enter__(self) -> EstargzLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(self, expected_toc_digest: str | None = None) -> VerifyReport:
        """Check the whole blob (see the module docstring); raises `FormatError` on the first problem."""
        if expected_toc_digest is not None and expected_toc_digest != self.toc_digest:
            raise FormatError(f"eStargz TOC digest is {self.toc_digest}, expected {expected_toc_digest}")
        missing = _missing_link_targets(self.entries)
        count, in_blob_order = _check_chunks(_chunks(self.entries, missing))
        chunks: Iterator[_Chunk] = _chunks(self.entries, missing)
        if not in_blob_order:  # not as writers lay it out: sort in memory
            chunks = iter(sorted(chunks, key=lambda c: (c.offset, c.inner_offset)))
        self._blob.seek(0)
        # the blob's tar holds the layer's entries plus the landmark and the TOC
        entries_limit = self._limits.max_layer_entries + 2
        guard = TarGuard(replace(self._limits, max_layer_entries=entries_limit))
        stream = _MemberStream(self._blob, self.size, chunks, guard)
        with io.BufferedReader(stream, _READ_SIZE) as buffered:
            _compare_tar(self.entries, buffered)
            while buffered.read(_READ_SIZE):
                pass
        stream.finish()
        return VerifyReport(
            toc_digest=self.toc_digest,
            diff_id="sha256:" + stream.diff_hash.hexdigest(),
            uncompressed_size=stream.position,
            entries=len(self.entries),
            chunks=count,
        )

    def apply_to(self, tree: FsTree) -> None:
        """Add this layer's files to `tree` (on top of lower layers), honouring OCI whiteouts."""
        added = tree.layer_paths()
        hardlinks: list[tuple[str, str]] = []
        shared: dict[object, Any] = {}
        for entry in self.entries:
            if len(shared) > _MAX_SHARED:
                shared.clear()
            if entry["type"] == "chunk":
                continue
            path = normalize(entry["name"])
            directory, base = posixpath.split(path)
            if directory == "/" and base in LANDMARK_NAMES:
                continue
            if tree.apply_whiteout(path, added):
                continue
            if entry["type"] == "hardlink":
                hardlinks.append((path, entry.get("linkName", "")))
                added.add(path)
            else:
                tree.add(path, _node(entry, shared), added)
                added.add(path)
        for path, target in hardlinks:  # the TOC does not promise that targets come first
            tree.link(path, target, added)


def open_estargz(blob: BinaryIO) -> EstargzLayer:
    return EstargzLayer(blob)


def tree_from_estargz_layers(blobs: Iterable[BinaryIO]) -> FsTree:
    """The filesystem of an image made of these eStargz layers (bottom first), from their TOCs."""
    tree = FsTree()
    for blob in blobs:
        with open_estargz(blob) as layer:
            layer.apply_to(tree)
    return tree


def _modtime(value: str) -> int:
    try:
        return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise FormatError(f"eStargz TOC: bad modtime {value!r}") from None


_NO_RDEV = (0, 0)


def _node(entry: dict[str, Any], shared: dict[object, Any]) -> Node:
    """The entry's `Node`; values many nodes have (kinds, modes, mtimes, ids) are one object each
    through `shared`, as a tree of a million nodes would otherwise hold a million copies."""
    kind = entry["type"]
    xattrs = {name: base64.b64decode(value) for name, value in (entry.get("xattrs") or {}).items()}
    rdev = (int(entry.get("devMajor", 0)), int(entry.get("devMinor", 0)))
    mtime = _modtime(entry["modtime"]) if entry.get("modtime") else 0
    return Node(
        kind=shared.setdefault(kind, kind),
        mode=shared.setdefault(("mode", mode := int(entry.get("mode", 0)) & 0o7777), mode),
        uid=shared.setdefault(("id", uid := int(entry.get("uid", 0))), uid),
        gid=shared.setdefault(("id", gid := int(entry.get("gid", 0))), gid),
        size=int(entry.get("size", 0)),
        digest=str(entry.get("digest", "")).removeprefix("sha256:") if kind == "reg" else "",
        target=str(entry.get("linkName", "")) if kind == "symlink" else "",
        rdev=_NO_RDEV if rdev == _NO_RDEV else rdev,
        xattrs=xattrs,
        mtime=shared.setdefault(("mtime", mtime), mtime),
    )


def _missing_link_targets(entries: Iterable[dict[str, Any]]) -> set[str]:
    """The hardlink targets that are not entries of the TOC (every name must be a clean path)."""
    targets: set[str] = set()
    for entry in entries:
        if entry["type"] != "chunk":
            normalize(entry["name"])
        if entry["type"] == "hardlink":
            targets.add(normalize(entry.get("linkName", "")))
    if targets:
        for entry in entries:
            if entry["type"] != "chunk":
                targets.discard(normalize(entry["name"]))
    return targets


def _check_chunks(chunks: Iterator[_Chunk]) -> tuple[int, bool]:
    """How many chunks there are, and whether they come in blob order (by offset, innerOffset)."""
    count, ordered, last = 0, True, (-1, -1)
    for chunk in chunks:
        count += 1
        key = (chunk.offset, chunk.inner_offset)
        ordered = ordered and key >= last
        last = key
    return count, ordered


def _chunks(entries: Iterable[dict[str, Any]], missing_targets: set[str]) -> Iterator[_Chunk]:
    """Every data chunk with its length, in TOC order; checks that each file's chunks cover it exactly."""
    following = iter(entries)
    entry = next(following, None)
    while entry is not None:
        after = next(following, None)
        if entry["type"] == "hardlink" and normalize(entry.get("linkName", "")) in missing_targets:
            raise FormatError(f"eStargz TOC: hardlink {entry['name']!r} points to a missing entry")
        if entry["type"] == "chunk":
            raise FormatError(f"eStargz TOC: chunk entry {entry['name']!r} does not follow its file")
        size = int(entry.get("size", 0))
        if entry["type"] != "reg" or size == 0:
            entry = after
            continue
        if not _DIGEST.fullmatch(str(entry.get("digest", ""))):
            raise FormatError(f"eStargz TOC: {entry['name']!r} has no valid digest")
        parts = [entry]
        while after is not None and after["type"] == "chunk":
            parts.append(after)
            after = next(following, None)
        for number, part in enumerate(parts):
            begin = int(part.get("chunkOffset", 0))
            end = int(parts[number + 1].get("chunkOffset", 0)) if number + 1 < len(parts) else size
            declared = int(part.get("chunkSize", 0))
            if part["name"] != entry["name"] or end <= begin or (declared and declared != end - begin):
                raise FormatError(f"eStargz TOC: chunks of {entry['name']!r} do not cover the file")
            if number == 0 and begin != 0:
                raise FormatError(f"eStargz TOC: first chunk of {entry['name']!r} does not start at 0")
            digest = str(part.get("chunkDigest", ""))
            if not _DIGEST.fullmatch(digest):
                raise FormatError(f"eStargz TOC: chunk of {entry['name']!r} has no valid chunkDigest")
            offset, inner = int(part.get("offset", 0)), int(part.get("innerOffset", 0))
            yield _Chunk(entry["name"], offset, inner, end - begin, digest)
        entry = after


class _MemberStream(io.RawIOBase):
    """The blob decompressed member by member, checking chunk digests as the data flows by."""

    def __init__(self, blob: BinaryIO, size: int, chunks: Iterator[_Chunk], guard: TarGuard) -> None:
        """`chunks` come in blob order (by offset, then innerOffset)."""
        self._guard = guard
        self._blob = blob
        self._size = size
        self._compressed_read = 0
        self._pending = b""
        self._inflater: Any = None
        self.position = 0
        self.diff_hash = hashlib.sha256()
        self._chunks = chunks
        self._waiting = next(chunks, None)  # the next chunk whose member has not been reached
        self._active: deque[_Chunk] = deque()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._inflater is None:
                member_offset = self._compressed_read - len(self._pending)
                if member_offset >= self._size:
                    return 0
                self._start_member(member_offset)
            if not self._pending:
                self._pending = self._blob.read(min(_READ_SIZE, self._size - self._compressed_read))
                self._compressed_read += len(self._pending)
                if not self._pending:
                    raise FormatError("eStargz blob: truncated gzip member")
            try:
                data = self._inflater.decompress(self._pending, len(view))
            except Exception as exc:  # isal_zlib.error
                raise FormatError(
                    f"eStargz blob: bad gzip data near byte {self._compressed_read} ({exc})"
                ) from None
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
                self._inflater = None
            if data:
                self._consume(data)
                view[: len(data)] = data
                return len(data)

    def _start_member(self, offset: int) -> None:
        self._inflater = isal_zlib.decompressobj(31)
        while self._waiting is not None and self._waiting.offset <= offset:
            chunk = self._waiting
            if chunk.offset < offset:
                break  # reported by finish(), after the data is checked
            chunk.start = self.position + chunk.inner_offset
            self._active.append(chunk)
            self._waiting = next(self._chunks, None)

    def _consume(self, data: bytes) -> None:
        self._guard.feed(data)
        self.diff_hash.update(data)
        begin, end = self.position, self.position + len(data)
        self.position = end
        for chunk in self._active:  # ordered by start; valid chunks do not overlap
            if chunk.start >= end:
                break
            take_from = max(chunk.start + chunk.done, begin)
            take_to = min(chunk.start + chunk.length, end)
            if take_from < take_to:
                chunk.hasher.update(data[take_from - begin : take_to - begin])
                chunk.done += take_to - take_from
        while self._active and self._active[0].done == self._active[0].length:
            chunk = self._active.popleft()
            if "sha256:" + chunk.hasher.hexdigest() != chunk.digest:
                raise FormatError(
                    f"eStargz blob: chunk of {chunk.name!r} at offset {chunk.offset} is corrupt"
                )

    def finish(self) -> None:
        if self._waiting is not None:
            offset = self._waiting.offset
            raise FormatError(f"eStargz TOC: offset {offset} is not the start of a gzip member")
        if self._active:
            raise FormatError(
                f"eStargz blob: chunk of {self._active[0].name!r} runs past the end of the data"
            )


def _as_in_toc(tar_string: str) -> str:
    # Go writes each byte of invalid UTF-8 as U+FFFD; tarfile keeps such bytes as lone surrogates
    return re.sub("[\udc80-\udcff]", "\ufffd", tar_string)


def _same_name(toc_name: str, tar_name: str) -> bool:
    tar_name = _as_in_toc(tar_name)
    try:
        return normalize(toc_name) == normalize(tar_name)
    except FormatError:
        return toc_name.strip("/") == tar_name.strip("/")


def _compare_tar(entries: Iterable[dict[str, Any]], stream: BinaryIO) -> None:
    expected = (e for e in entries if e["type"] != "chunk")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            while (info := archive.next()) is not None:
                vars(archive)["members"].clear()  # TarFile keeps every TarInfo read: a million here
                entry = next(expected, None)
                if entry is None:
                    if info.name != TOC_NAME:
                        raise FormatError(f"eStargz blob: tar entry {info.name!r} is not in the TOC")
                    if archive.next() is not None:
                        raise FormatError("eStargz blob: tar entries after the TOC entry")
                    return
                _compare_entry(entry, info, archive)
    except tarfile.TarError as exc:
        raise FormatError(f"eStargz blob: the decompressed stream is not a valid tar ({exc})") from None
    raise FormatError("eStargz blob: the tar has fewer entries than the TOC")


def _compare_entry(entry: dict[str, Any], info: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
    kind = _TAR_TYPES.get(info.type, "?")
    if kind == "reg" and info.name.endswith("/"):
        kind = "dir"
    problem = ""
    if not _same_name(entry["name"], info.name) or kind != entry["type"]:
        problem = f"is {kind} {info.name!r} in the tar"
    elif kind in ("hardlink", "symlink") and entry.get("linkName", "") != _as_in_toc(info.linkname):
        problem = f"links to {info.linkname!r} in the tar"
    elif kind == "reg":
        digest = hashlib.sha256()
        content = archive.extractfile(info)
        assert content is not None
        while piece := content.read(_READ_SIZE):
            digest.update(piece)
        if info.size != int(entry.get("size", 0)):
            problem = f"has {info.size} bytes in the tar"
        elif "sha256:" + digest.hexdigest() != entry.get("digest"):
            problem = "has different content in the tar"
    if problem:
        raise FormatError(f"eStargz blob: TOC entry {entry['name']!r} ({entry['type']}) {problem}")
