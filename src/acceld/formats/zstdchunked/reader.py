"""Reader and checker for containers/storage zstd:chunked blobs (used by `acceld check`).

Deliberately independent of the writer: tar headers kept in the tar-split are parsed with
Python's `tarfile`, frames are found from the zstd headers, and everything is checked
against the layer annotations the way a partial pull (containers/storage) would, plus the
footer, frame boundaries and a byte-exact re-assembly of the tar from tar-split and TOC.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from acceld.formats.fstree import FsTree, Node, normalize
from acceld.formats.jsonstream import JsonText
from acceld.formats.limits import DEFAULT_LIMITS, Limits, exceeded
from acceld.formats.records import RecordFile
from acceld.formats.targuard import TarGuard
from acceld.formats.zstdchunked.errors import invalid
from acceld.formats.zstdchunked.reader_frames import BoundedReader, frames
from acceld.formats.zstdchunked.reader_names import NameIndex
from acceld.formats.zstdchunked.reader_tarsplit import (
    TAR_TYPES,
    TarSplitAssembler,
    compare_entry,
    tar_split_headers,
    toc_name,
    toc_time,
)

CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_KEY = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_CHECKSUM_KEY = "io.containers.zstd-chunked.manifest-checksum"
_SKIPPABLE = b"\x50\x2a\x4d\x18"
_FOOTER_FRAME = _SKIPPABLE + struct.pack("<I", 64)
_FOOTER_MAGIC = b"GNUlInUx"
_LEGACY_MAGIC = b"GnUlInUx"
_READ = 1 << 20


@dataclass(frozen=True)
class Span:
    """Where a metadata part lives: offset of its compressed bytes, and both lengths."""

    offset: int
    compressed: int
    uncompressed: int


@dataclass(frozen=True)
class LayerReport:
    entries: int
    files: int
    chunks: int
    zeros_chunks: int
    frames: int
    diff_id: str
    tar_size: int


def _parse_span(value: str, key: str, parts: int) -> tuple[int, ...]:
    fields = value.split(":")
    if len(fields) != parts or not all(f.isdigit() for f in fields):
        raise invalid(f"annotation {key} is malformed: {value!r}")
    return tuple(int(f) for f in fields)


class ZstdChunkedReader:
    """A zstd:chunked blob on disk, with its TOC and tar-split loaded and authenticated.

    The TOC's entries are kept in a temp file in `directory` (default: the system's) until `close`;
    `toc` holds the TOC's other keys.
    """

    def __init__(
        self,
        blob: Path,
        annotations: Mapping[str, str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        directory: Path | None = None,
    ) -> None:
        self.entries = RecordFile(directory, "zstdchunked-toc-")
        self._names = NameIndex(directory)
        try:
            with _malformed():
                self._load(blob, annotations, limits)
        except BaseException:
            self.close()
            raise

    def _load(self, blob: Path, annotations: Mapping[str, str] | None, limits: Limits) -> None:
        self.limits = limits
        self.blob = blob
        self.size = blob.stat().st_size
        with blob.open("rb") as f:
            toc_span, tar_split_span = self._footer(f)
            if annotations is not None:
                toc_span, tar_split_span = self._check_annotations(annotations, toc_span, tar_split_span)
            self._part_header(f, toc_span, "TOC")
            toc_digest = _span_digest(f, toc_span)
            self._part_header(f, tar_split_span, "tar-split")
            tar_split_digest = _span_digest(f, tar_split_span)
        if annotations is not None and toc_digest != annotations[CHECKSUM_KEY]:
            raise invalid(f"TOC digest {toc_digest} does not match the manifest-checksum annotation")
        self.toc_span, self.tar_split_span = toc_span, tar_split_span
        self.toc: dict[str, Any] = self._load_toc()
        if self.toc.get("tarSplitDigest") != tar_split_digest:
            raise invalid("tarSplitDigest in the TOC does not match the tar-split")
        self._check_entries()
        self._check_toc_matches_tar_split()

    def close(self) -> None:
        self.entries.close()
        self._names.close()

    def __enter__(self) -> ZstdChunkedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata -------------------------------------------------------------------------

    def _footer(self, f: BinaryIO) -> tuple[Span, Span]:
        if self.size < 72:
            raise invalid("blob too small for a footer")
        f.seek(self.size - 72)
        tail = f.read(72)
        if tail[-8:] == _LEGACY_MAGIC or tail[-40 - 8 : -40] == _SKIPPABLE + struct.pack("<I", 40):
            raise invalid(
                "legacy stargz-snapshotter variant (40-byte GnUlInUx footer), not containers/storage"
            )
        if tail[:8] != _FOOTER_FRAME or tail[-8:] != _FOOTER_MAGIC:
            raise invalid("no 64-byte GNUlInUx footer at the end of the blob")
        values = struct.unpack("<7Q", tail[8:64])
        toc = Span(values[0], values[1], values[2])
        if values[3] != 1:
            raise invalid(f"footer manifest type {values[3]} is not 1 (CRFS)")
        tar_split = Span(values[4], values[5], values[6])
        if tar_split.offset != toc.offset + toc.compressed + 8:
            raise invalid("footer: tar-split does not directly follow the TOC")
        if tar_split.offset + tar_split.compressed + 72 != self.size:
            raise invalid("footer: the tar-split does not end where the footer frame starts")
        return toc, tar_split

    @staticmethod
    def _check_annotations(annotations: Mapping[str, str], toc: Span, tar_split: Span) -> tuple[Span, Span]:
        if POSITION_KEY not in annotations:
            legacy = LEGACY_CHECKSUM_KEY in annotations
            raise invalid(
                "legacy io.containers.* annotations only" if legacy else f"annotation {POSITION_KEY} missing"
            )
        for key in (CHECKSUM_KEY, TARSPLIT_KEY):
            if key not in annotations:
                raise invalid(f"annotation {key} missing")
        offset, compressed, uncompressed, kind = _parse_span(annotations[POSITION_KEY], POSITION_KEY, 4)
        if kind != 1:
            raise invalid(f"manifest type {kind} is not 1 (CRFS)")
        annotated_toc = Span(offset, compressed, uncompressed)
        annotated_tar_split = Span(*_parse_span(annotations[TARSPLIT_KEY], TARSPLIT_KEY, 3))
        if (annotated_toc, annotated_tar_split) != (toc, tar_split):
            raise invalid("annotations and footer disagree on the TOC or tar-split position")
        return annotated_toc, annotated_tar_split

    def _part_header(self, f: BinaryIO, span: Span, what: str) -> None:
        """Check the part's declared sizes and its skippable frame header (`f` is left at its start)."""
        # the default limit is containers/storage's maxTocSize, above which it pulls the whole layer
        size = max(span.uncompressed, span.compressed)
        if size > self.limits.max_metadata_bytes:
            raise exceeded(self.limits, "max_metadata_bytes", f"the {what} declares {size:,} bytes")
        if span.offset < 8 or span.offset + span.compressed > self.size:
            raise invalid(f"{what} position outside the blob")
        f.seek(span.offset - 8)
        header = f.read(8)
        if header != _SKIPPABLE + struct.pack("<I", span.compressed):
            raise invalid(f"{what} is not stored in a skippable frame of its length")

    def _toc_pieces(self) -> Iterator[bytes]:
        """The TOC JSON, decompressed from the blob piece by piece with its declared size as the cap."""
        span = self.toc_span
        with self.blob.open("rb") as f:
            f.seek(span.offset)
            compressed = io.BufferedReader(BoundedReader(f, span.compressed), _READ)
            reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
            size = 0
            while piece := _read_part(reader, "TOC", span.uncompressed + 1 - size):
                size += len(piece)
                if size > span.uncompressed:
                    raise invalid(
                        f"TOC is larger uncompressed than the {span.uncompressed} bytes its position says"
                    )
                yield piece
            if size != span.uncompressed:
                raise invalid(f"TOC is {size} bytes uncompressed, the position says {span.uncompressed}")

    def _load_toc(self) -> dict[str, Any]:
        """The TOC's keys but `entries`, whose values go to `self.entries` one by one."""
        text = JsonText(self._toc_pieces(), "zstd:chunked: TOC")
        not_a_manifest = invalid("TOC is not a version 1 manifest with entries")
        if text.peek() != "{":
            text.value()
            raise not_a_manifest
        text.take("{")
        toc: dict[str, Any] = {}
        seen_entries = False
        while text.peek() != "}":
            key = text.value()
            if not isinstance(key, str):
                raise invalid("TOC is not JSON: expected a key")
            text.take(":")
            if key == "entries" and text.peek() == "[":
                if seen_entries:
                    raise invalid("TOC has two `entries` lists")
                seen_entries = True
                self._load_entries(text)
            else:
                toc[key] = text.value()
            if text.peek() != ",":
                break
            text.take(",")
        text.take("}")
        if text.peek():
            raise invalid("TOC is not JSON: data after the TOC object")
        self.entries.seal()
        if toc.get("version") != 1 or not seen_entries or "entries" in toc:
            raise not_a_manifest
        return toc

    def _load_entries(self, text: JsonText) -> None:
        text.take("[")
        if text.peek() == "]":
            text.take("]")
            return
        while True:
            self.entries.append(text.value())
            if text.peek() != ",":
                break
            text.take(",")
        text.take("]")

    def _tar_split_lines(self) -> Iterator[dict[str, Any]]:
        """The tar-split's JSON lines, decompressed from the blob piece by piece on every call (a
        layer of a million files has a gigabyte of them)."""
        span = self.tar_split_span
        with self.blob.open("rb") as f:
            f.seek(span.offset)
            compressed = io.BufferedReader(BoundedReader(f, span.compressed), _READ)
            reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
            size, rest = 0, b""
            while piece := _read_part(reader, "tar-split"):
                size += len(piece)
                if size > span.uncompressed:
                    declared = span.uncompressed
                    raise invalid(f"tar-split is larger uncompressed than the {declared} bytes declared")
                *lines, rest = (rest + piece).split(b"\n")
                yield from map(_tar_split_line, lines)
            if size != span.uncompressed:
                raise invalid(
                    f"tar-split is {size} bytes uncompressed, the position says {span.uncompressed}"
                )
            if rest:
                yield _tar_split_line(rest)

    def _check_entries(self) -> None:
        current: dict[str, Any] | None = None
        next_chunk_offset = 0
        for index, entry in enumerate(self.entries):
            kind, name = entry.get("type"), entry.get("name")
            if not isinstance(name, str):
                raise invalid("TOC entry without a name")
            if kind == "chunk":
                if (
                    current is None
                    or current["name"] != name
                    or entry.get("chunkOffset") != next_chunk_offset
                ):
                    raise invalid(f"chunk entry for {name!r} does not continue its file")
                next_chunk_offset += self._chunk_size(entry)
                continue
            if current is not None and next_chunk_offset != current.get("size", 0):
                raise invalid(f"chunks of {current['name']!r} do not add up to its size")
            current = None
            if kind not in TAR_TYPES:
                raise invalid(f"TOC entry {name!r} has unknown type {kind!r}")
            if not self._names.add(name, index):
                raise invalid(f"TOC contains duplicate entries for path {name!r}")
            if kind == "reg" and entry.get("size", 0):
                if not entry.get("digest") or not entry.get("offset") or not entry.get("endOffset"):
                    raise invalid(f"TOC entry {name!r} lacks digest or offsets")
                current = entry
                next_chunk_offset = self._chunk_size(entry) if "chunkSize" in entry else entry["size"]
        if current is not None and next_chunk_offset != current.get("size", 0):
            raise invalid(f"chunks of {current['name']!r} do not add up to its size")

    @staticmethod
    def _chunk_size(entry: dict[str, Any]) -> int:
        size = entry.get("chunkSize", 0)
        if not isinstance(size, int) or size <= 0 or entry.get("chunkType", "") not in ("", "zeros"):
            raise invalid(f"bad chunk in TOC entry {entry['name']!r}")
        return size

    # -- TOC versus tar-split (containers/storage ensureTOCMatchesTarSplit) ---------------

    def _check_toc_matches_tar_split(self) -> None:
        pending = self._names.unmatched()
        for info, block in tar_split_headers(self._tar_split_lines()):
            name = toc_name(info, pending)
            index = self._names.match(name)
            if index is None:
                raise invalid(f"tar-split contains an entry for {info.name!r} missing in the TOC")
            entry = self.entries[index]
            for field, expected, actual in compare_entry(entry, info, block):
                if expected != actual:
                    raise invalid(
                        f"TOC and tar-split disagree on {field} of {name!r}: {actual!r} != {expected!r}"
                    )
        left = self._names.first_unmatched(5)
        if left:
            raise invalid(f"TOC contains entries not present in the tar-split, e.g. {left}")

    # -- data -----------------------------------------------------------------------------

    def _ranges(self) -> Iterator[_Range]:
        """Compressed ranges the TOC promises: every file, and every chunk of multi-chunk files."""
        file: dict[str, Any] | None = None
        chunks: list[dict[str, Any]] = []

        def close() -> Iterator[_Range]:
            if file is None:
                return
            yield (
                _Range(
                    file["offset"],
                    file["endOffset"],
                    file["size"],
                    file["digest"],
                    file["name"],
                    is_file=True,
                )
            )
            if len(chunks) > 1:
                ends = [c["offset"] for c in chunks[1:]] + [file["endOffset"]]
                for index, (chunk, end) in enumerate(zip(chunks, ends, strict=True)):
                    what = f"{file['name']} chunk {index}"
                    yield _Range(chunk["offset"], end, chunk["chunkSize"], chunk["chunkDigest"], what)

        for entry in self.entries:
            if entry["type"] == "chunk":
                chunks.append(entry)
                continue
            yield from close()
            file, chunks = (entry, [entry]) if entry["type"] == "reg" and entry.get("size", 0) else (None, [])
        yield from close()

    def verify(self, source_tar: BinaryIO | None = None, diff_id: str | None = None) -> LayerReport:
        """Check frame boundaries, every file and chunk digest, and that the stream is the tar.

        The decompressed stream must equal what the tar-split segments plus file contents
        re-assemble, the TOC must point at the same bytes as the tar-split for every file,
        and the stream must equal `source_tar` / hash to `diff_id` when those are given.
        """
        with _malformed():
            starting = _RangeStarts(self._ranges)
            active: list[_RangeCheck] = []
            assembler = TarSplitAssembler(self._tar_split_lines(), self._names.content_at)
            stream_digest = hashlib.sha256()
            tar_size = frame_count = 0
            guard = TarGuard(self.limits)
            for start, end, pieces in frames(self.blob, self.toc_span.offset - 8):
                frame_count += 1
                for r in starting.pop(start):
                    active.append(_RangeCheck(r))
                    if r.is_file:
                        self._names.toc_at(r.what, tar_size)
                for content in pieces:
                    guard.feed(content)
                    for check in active:
                        check.feed(content)
                    stream_digest.update(content)
                    tar_size += len(content)
                    assembler.feed(content)
                    if source_tar is not None and _read_exact(source_tar, len(content)) != content:
                        raise invalid(
                            f"decompressed stream differs from the source tar before byte {tar_size}"
                        )
                still: list[_RangeCheck] = []
                for check in active:
                    if check.range.end == end:
                        check.finish()
                    elif check.range.end < end:
                        raise invalid(
                            f"{check.range.what}: end offset {check.range.end} is not a frame boundary"
                        )
                    else:
                        still.append(check)
                active = still
            unstarted = starting.first_left()
            if unstarted is not None:
                raise invalid(f"{unstarted.what}: offset {unstarted.start} is not the start of a zstd frame")
            if active:
                raise invalid(f"{active[0].range.what}: range runs past the data frames")
            assembler.finish()
            if source_tar is not None and source_tar.read(1):
                raise invalid("the source tar is longer than the decompressed stream")
            misplaced = self._names.first_misplaced()
            if misplaced is not None:
                raise invalid(
                    f"{misplaced}: TOC offset points at other bytes than the tar-split places the file"
                )
            digest = "sha256:" + stream_digest.hexdigest()
            if diff_id is not None and digest != diff_id:
                raise invalid(f"decompressed stream digest {digest} is not the diff_id {diff_id}")
            files = chunks = zeros_chunks = 0
            for entry in self.entries:
                files += entry["type"] == "reg"
                if "chunkDigest" in entry:
                    chunks += 1
                    zeros_chunks += entry.get("chunkType") == "zeros"
            return LayerReport(
                entries=len(self.entries),
                files=files,
                chunks=chunks,
                zeros_chunks=zeros_chunks,
                frames=frame_count,
                diff_id=digest,
                tar_size=tar_size,
            )

    # -- filesystem -----------------------------------------------------------------------

    def apply_to(self, tree: FsTree) -> None:
        """Apply this layer's TOC to `tree` with OCI whiteout semantics."""
        with _malformed():
            added_here = tree.layer_paths()
            for entry in self.entries:
                if entry["type"] == "chunk":
                    continue
                path = normalize(entry["name"])
                if tree.apply_whiteout(path, added_here):
                    continue
                if entry["type"] == "hardlink":
                    tree.link(path, entry.get("linkName", ""), added_here)
                else:
                    tree.add(path, _node(entry), added_here)
                added_here.add(path)

    def to_fstree(self) -> FsTree:
        tree = FsTree()
        self.apply_to(tree)
        return tree


@contextmanager
def _malformed() -> Iterator[None]:
    """Turn the errors of unexpected JSON shapes in a TOC or tar-split into one-line FormatErrors."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise invalid(f"malformed TOC or tar-split ({type(exc).__name__}: {exc})") from None


def tree_from_readers(layers: Iterable[ZstdChunkedReader], directory: Path | None = None) -> FsTree:
    """The filesystem of an image whose layers (in order) are these zstd:chunked blobs
    (its database in `directory`, by default the temp dir)."""
    tree = FsTree(directory)
    for layer in layers:
        layer.apply_to(tree)
    return tree


@dataclass(frozen=True, slots=True)
class _Range:
    start: int
    end: int
    size: int
    digest: str
    what: str
    is_file: bool = False


class _RangeStarts:
    """The ranges by start offset, popped as the frames start: streamed when they come in blob order
    (as writers list them), else sorted in memory."""

    def __init__(self, ranges: Callable[[], Iterator[_Range]]) -> None:
        in_order = all(a.start <= b.start for a, b in itertools.pairwise(ranges()))
        self._ranges = ranges() if in_order else iter(sorted(ranges(), key=lambda r: r.start))
        self._next = next(self._ranges, None)
        self._missed: _Range | None = None  # the first range that starts inside a frame

    def pop(self, start: int) -> list[_Range]:
        found = []
        while self._next is not None and self._next.start <= start:
            if self._next.start == start:
                found.append(self._next)
            elif self._missed is None:
                self._missed = self._next
            self._next = next(self._ranges, None)
        return found

    def first_left(self) -> _Range | None:
        """The range of the lowest offset that no frame started at."""
        return self._missed or self._next


class _RangeCheck:
    def __init__(self, expected: _Range) -> None:
        self.range = expected
        self._hash = hashlib.sha256()
        self._size = 0

    def feed(self, content: bytes) -> None:
        self._hash.update(content)
        self._size += len(content)

    def finish(self) -> None:
        if self._size != self.range.size:
            raise invalid(f"{self.range.what}: {self._size} bytes, the TOC says {self.range.size}")
        if "sha256:" + self._hash.hexdigest() != self.range.digest:
            raise invalid(f"{self.range.what}: content digest does not match the TOC")


def _span_digest(f: BinaryIO, span: Span) -> str:
    """sha256 of a part's compressed bytes, read from `f` (positioned at its start) in pieces."""
    digest = hashlib.sha256()
    left = span.compressed
    while left and (data := f.read(min(left, _READ))):
        digest.update(data)
        left -= len(data)
    return "sha256:" + digest.hexdigest()


def _read_part(reader: zstandard.ZstdDecompressionReader, what: str, at_most: int = _READ) -> bytes:
    try:
        return reader.read(min(_READ, at_most))
    except zstandard.ZstdError as exc:
        raise invalid(f"{what} does not decompress: {exc}") from None


def _tar_split_line(line: bytes) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError as exc:
        raise invalid(f"tar-split line is not JSON: {exc}") from None
    return parsed


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size and (more := stream.read(size - len(data))):
        data += more
    return data


_KINDS = {"reg": "reg", "dir": "dir", "symlink": "symlink", "char": "char", "block": "block", "fifo": "fifo"}


def _node(entry: Mapping[str, Any]) -> Node:
    stamp = toc_time(entry, "modtime")
    digest = entry.get("digest") or "sha256:" + hashlib.sha256().hexdigest()
    return Node(
        kind=_KINDS[entry["type"]],
        mode=entry.get("mode", 0) & 0o7777,
        uid=entry.get("uid", 0),
        gid=entry.get("gid", 0),
        size=entry.get("size", 0) if entry["type"] == "reg" else 0,
        digest=digest.removeprefix("sha256:") if entry["type"] == "reg" else "",
        target=entry.get("linkName", "") if entry["type"] == "symlink" else "",
        rdev=(entry.get("devMajor", 0), entry.get("devMinor", 0))
        if entry["type"] in ("char", "block")
        else (0, 0),
        xattrs={k: base64.b64decode(v) for k, v in entry.get("xattrs", {}).items()},
        mtime=stamp[0] if stamp else 0,
    )
