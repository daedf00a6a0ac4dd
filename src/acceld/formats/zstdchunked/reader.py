"""Reader and checker for containers/storage zstd:chunked blobs (used by `acceld check`).

Deliberately independent of the writer: tar headers kept in the tar-split are parsed with
Python's `tarfile`, frames are found by decompressing the blob, and everything is checked
against the layer annotations the way a partial pull (containers/storage) would, plus the
footer, frame boundaries and a byte-exact re-assembly of the tar from tar-split and TOC.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastcrc
import zstandard

from acceld.formats.driver import FormatError
from acceld.formats.fstree import OPAQUE_MARKER, WHITEOUT_PREFIX, FsTree, Node, normalize, tarinfo_xattrs

CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"
TARSPLIT_KEY = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_CHECKSUM_KEY = "io.containers.zstd-chunked.manifest-checksum"
MAX_TOC_SIZE = 150 << 20  # containers/storage maxTocSize
_SKIPPABLE = b"\x50\x2a\x4d\x18"
_FOOTER_FRAME = _SKIPPABLE + struct.pack("<I", 64)
_FOOTER_MAGIC = b"GNUlInUx"
_LEGACY_MAGIC = b"GnUlInUx"
_READ = 1 << 17
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_TYPES = {
    "reg": tarfile.REGTYPE,
    "hardlink": tarfile.LNKTYPE,
    "symlink": tarfile.SYMTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "dir": tarfile.DIRTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\Z")


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


def _fail(message: str) -> FormatError:
    return FormatError(f"zstd:chunked: {message}")


def _parse_span(value: str, key: str, parts: int) -> tuple[int, ...]:
    fields = value.split(":")
    if len(fields) != parts or not all(f.isdigit() for f in fields):
        raise _fail(f"annotation {key} is malformed: {value!r}")
    return tuple(int(f) for f in fields)


def parse_toc_time(value: str) -> tuple[int, int]:
    """An RFC 3339 timestamp as (Unix seconds, nanoseconds)."""
    match = _RFC3339.match(value)
    if not match:
        raise _fail(f"bad TOC timestamp {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    nsec = int((match.group(7) or "0")[:9].ljust(9, "0"))
    zone = match.group(8)
    offset = (
        0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    )
    return calendar.timegm((year, month, day, hour, minute, second)) - offset, nsec


class ZstdChunkedReader:
    """A zstd:chunked blob on disk, with its TOC and tar-split loaded and authenticated."""

    def __init__(self, blob: Path, annotations: Mapping[str, str] | None = None) -> None:
        self.blob = blob
        self.size = blob.stat().st_size
        with blob.open("rb") as f:
            toc_span, tar_split_span = self._footer(f)
            if annotations is not None:
                toc_span, tar_split_span = self._check_annotations(annotations, toc_span, tar_split_span)
            compressed_toc = self._part(f, toc_span, "TOC")
            compressed_tar_split = self._part(f, tar_split_span, "tar-split")
        if annotations is not None:
            digest = "sha256:" + hashlib.sha256(compressed_toc).hexdigest()
            if digest != annotations[CHECKSUM_KEY]:
                raise _fail(f"TOC digest {digest} does not match the manifest-checksum annotation")
        self.toc_span, self.tar_split_span = toc_span, tar_split_span
        self.toc: dict[str, Any] = self._load_toc(compressed_toc, toc_span)
        tar_split_digest = "sha256:" + hashlib.sha256(compressed_tar_split).hexdigest()
        if self.toc.get("tarSplitDigest") != tar_split_digest:
            raise _fail("tarSplitDigest in the TOC does not match the tar-split")
        self.tar_split = self._load_tar_split(compressed_tar_split, tar_split_span)
        self.entries: list[dict[str, Any]] = self.toc["entries"]
        self._check_entries()
        self._check_toc_matches_tar_split()

    # -- metadata -------------------------------------------------------------------------

    def _footer(self, f: BinaryIO) -> tuple[Span, Span]:
        if self.size < 72:
            raise _fail("blob too small for a footer")
        f.seek(self.size - 72)
        tail = f.read(72)
        if tail[-8:] == _LEGACY_MAGIC or tail[-40 - 8 : -40] == _SKIPPABLE + struct.pack("<I", 40):
            raise _fail("legacy stargz-snapshotter variant (40-byte GnUlInUx footer), not containers/storage")
        if tail[:8] != _FOOTER_FRAME or tail[-8:] != _FOOTER_MAGIC:
            raise _fail("no 64-byte GNUlInUx footer at the end of the blob")
        values = struct.unpack("<7Q", tail[8:64])
        toc = Span(values[0], values[1], values[2])
        if values[3] != 1:
            raise _fail(f"footer manifest type {values[3]} is not 1 (CRFS)")
        tar_split = Span(values[4], values[5], values[6])
        if tar_split.offset != toc.offset + toc.compressed + 8:
            raise _fail("footer: tar-split does not directly follow the TOC")
        if tar_split.offset + tar_split.compressed + 72 != self.size:
            raise _fail("footer: the tar-split does not end where the footer frame starts")
        return toc, tar_split

    @staticmethod
    def _check_annotations(annotations: Mapping[str, str], toc: Span, tar_split: Span) -> tuple[Span, Span]:
        if POSITION_KEY not in annotations:
            legacy = LEGACY_CHECKSUM_KEY in annotations
            raise _fail(
                "legacy io.containers.* annotations only" if legacy else f"annotation {POSITION_KEY} missing"
            )
        for key in (CHECKSUM_KEY, TARSPLIT_KEY):
            if key not in annotations:
                raise _fail(f"annotation {key} missing")
        offset, compressed, uncompressed, kind = _parse_span(annotations[POSITION_KEY], POSITION_KEY, 4)
        if kind != 1:
            raise _fail(f"manifest type {kind} is not 1 (CRFS)")
        annotated_toc = Span(offset, compressed, uncompressed)
        annotated_tar_split = Span(*_parse_span(annotations[TARSPLIT_KEY], TARSPLIT_KEY, 3))
        if (annotated_toc, annotated_tar_split) != (toc, tar_split):
            raise _fail("annotations and footer disagree on the TOC or tar-split position")
        return annotated_toc, annotated_tar_split

    def _part(self, f: BinaryIO, span: Span, what: str) -> bytes:
        if span.compressed > MAX_TOC_SIZE or span.uncompressed > MAX_TOC_SIZE:
            raise _fail(f"{what} larger than 150 MiB; containers/storage would not pull it partially")
        if span.offset < 8 or span.offset + span.compressed > self.size:
            raise _fail(f"{what} position outside the blob")
        f.seek(span.offset - 8)
        header = f.read(8)
        if header != _SKIPPABLE + struct.pack("<I", span.compressed):
            raise _fail(f"{what} is not stored in a skippable frame of its length")
        return f.read(span.compressed)

    @staticmethod
    def _decompress(data: bytes, span: Span, what: str) -> bytes:
        try:
            plain = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError as exc:
            raise _fail(f"{what} does not decompress: {exc}") from None
        if len(plain) != span.uncompressed:
            raise _fail(f"{what} is {len(plain)} bytes uncompressed, the position says {span.uncompressed}")
        return plain

    def _load_toc(self, data: bytes, span: Span) -> dict[str, Any]:
        try:
            toc = json.loads(self._decompress(data, span, "TOC"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(f"TOC is not JSON: {exc}") from None
        if not isinstance(toc, dict) or toc.get("version") != 1 or not isinstance(toc.get("entries"), list):
            raise _fail("TOC is not a version 1 manifest with entries")
        return toc

    def _load_tar_split(self, data: bytes, span: Span) -> list[dict[str, Any]]:
        lines = self._decompress(data, span, "tar-split").splitlines()
        try:
            return [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise _fail(f"tar-split line is not JSON: {exc}") from None

    def _check_entries(self) -> None:
        names: set[str] = set()
        current: dict[str, Any] | None = None
        next_chunk_offset = 0
        for entry in self.entries:
            kind, name = entry.get("type"), entry.get("name")
            if not isinstance(name, str):
                raise _fail("TOC entry without a name")
            if kind == "chunk":
                if (
                    current is None
                    or current["name"] != name
                    or entry.get("chunkOffset") != next_chunk_offset
                ):
                    raise _fail(f"chunk entry for {name!r} does not continue its file")
                next_chunk_offset += self._chunk_size(entry)
                continue
            if current is not None and next_chunk_offset != current.get("size", 0):
                raise _fail(f"chunks of {current['name']!r} do not add up to its size")
            current = None
            if kind not in _TYPES:
                raise _fail(f"TOC entry {name!r} has unknown type {kind!r}")
            if name in names:
                raise _fail(f"TOC contains duplicate entries for path {name!r}")
            names.add(name)
            if kind == "reg" and entry.get("size", 0):
                if not entry.get("digest") or not entry.get("offset") or not entry.get("endOffset"):
                    raise _fail(f"TOC entry {name!r} lacks digest or offsets")
                current = entry
                next_chunk_offset = self._chunk_size(entry) if "chunkSize" in entry else entry["size"]
        if current is not None and next_chunk_offset != current.get("size", 0):
            raise _fail(f"chunks of {current['name']!r} do not add up to its size")

    @staticmethod
    def _chunk_size(entry: dict[str, Any]) -> int:
        size = entry.get("chunkSize", 0)
        if not isinstance(size, int) or size <= 0 or entry.get("chunkType", "") not in ("", "zeros"):
            raise _fail(f"bad chunk in TOC entry {entry['name']!r}")
        return size

    # -- TOC versus tar-split (containers/storage ensureTOCMatchesTarSplit) ---------------

    def tar_split_headers(self) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
        """Each tar header stored in the tar-split, parsed by Python's tarfile, with its last block."""
        padding = 0
        for line in self.tar_split:
            if line.get("type") == 1:
                continue
            if line.get("type") != 2:
                raise _fail(f"unexpected tar-split entry type {line.get('type')!r}")
            payload = base64.b64decode(line.get("payload") or "")
            if len(payload) < padding:
                raise _fail("tar-split segment shorter than the previous file's padding")
            payload = payload[padding:]
            padding = 0
            if not payload.strip(b"\0"):
                continue  # end-of-archive blocks or trailing zeros
            try:
                with tarfile.open(fileobj=io.BytesIO(payload + bytes(1024)), mode="r:") as archive:
                    info = archive.next()
            except tarfile.TarError as exc:
                raise _fail(f"tar-split segment is not a tar header: {exc}") from None
            if info is None:
                raise _fail("tar-split segment holds no tar header")
            yield info, payload[-512:]
            if info.type not in (
                tarfile.LNKTYPE,
                tarfile.SYMTYPE,
                tarfile.CHRTYPE,
                tarfile.BLKTYPE,
                tarfile.DIRTYPE,
            ):
                padding = -info.size % 512

    def _check_toc_matches_tar_split(self) -> None:
        pending = {e["name"]: e for e in self.entries if e["type"] != "chunk"}
        for info, block in self.tar_split_headers():
            name = _toc_name(info, pending)
            entry = pending.pop(name, None)
            if entry is None:
                raise _fail(f"tar-split contains an entry for {info.name!r} missing in the TOC")
            for field, expected, actual in _compare(entry, info, block):
                if expected != actual:
                    raise _fail(
                        f"TOC and tar-split disagree on {field} of {name!r}: {actual!r} != {expected!r}"
                    )
        if pending:
            raise _fail(f"TOC contains entries not present in the tar-split, e.g. {sorted(pending)[:5]}")

    # -- data -----------------------------------------------------------------------------

    def _frames(self) -> Iterator[tuple[int, int, Iterator[bytes]]]:
        """(compressed start, compressed end, content pieces) of each zstd frame before the TOC."""
        end_of_data = self.toc_span.offset - 8
        with self.blob.open("rb") as f:
            start = 0
            while start < end_of_data:
                end = _frame_end(f, start, end_of_data)
                f.seek(start)
                frame = io.BufferedReader(_Bounded(f, end - start), _READ)
                yield start, end, _pieces(zstandard.ZstdDecompressor().stream_reader(frame), start)
                start = end

    def _ranges(self) -> list[_Range]:
        """Compressed ranges the TOC promises: every file, and every chunk of multi-chunk files."""
        ranges: list[_Range] = []
        file: dict[str, Any] | None = None
        chunks: list[dict[str, Any]] = []

        def close() -> None:
            if file is None:
                return
            ranges.append(
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
                    ranges.append(
                        _Range(chunk["offset"], end, chunk["chunkSize"], chunk["chunkDigest"], what)
                    )

        for entry in self.entries:
            if entry["type"] == "chunk":
                chunks.append(entry)
                continue
            close()
            file, chunks = (entry, [entry]) if entry["type"] == "reg" and entry.get("size", 0) else (None, [])
        close()
        return ranges

    def verify(self, source_tar: BinaryIO | None = None, diff_id: str | None = None) -> LayerReport:
        """Check frame boundaries, every file and chunk digest, and that the stream is the tar.

        The decompressed stream must equal what the tar-split segments plus file contents
        re-assemble, the TOC must point at the same bytes as the tar-split for every file,
        and the stream must equal `source_tar` / hash to `diff_id` when those are given.
        """
        ranges = self._ranges()
        starting: dict[int, list[_Range]] = {}
        for r in ranges:
            starting.setdefault(r.start, []).append(r)
        active: list[_RangeCheck] = []
        toc_positions: dict[str, int] = {}
        assembler = _TarSplitAssembler(self.tar_split)
        stream_digest = hashlib.sha256()
        tar_size = frames = 0
        for start, end, pieces in self._frames():
            frames += 1
            for r in starting.pop(start, ()):
                active.append(_RangeCheck(r))
                if r.is_file:
                    toc_positions[r.what] = tar_size
            for content in pieces:
                for check in active:
                    check.feed(content)
                stream_digest.update(content)
                tar_size += len(content)
                assembler.feed(content)
                if source_tar is not None and _read_exact(source_tar, len(content)) != content:
                    raise _fail(f"decompressed stream differs from the source tar before byte {tar_size}")
            still: list[_RangeCheck] = []
            for check in active:
                if check.range.end == end:
                    check.finish()
                elif check.range.end < end:
                    raise _fail(f"{check.range.what}: end offset {check.range.end} is not a frame boundary")
                else:
                    still.append(check)
            active = still
        if starting:
            offset, (first, *_) = next(iter(sorted(starting.items())))
            raise _fail(f"{first.what}: offset {offset} is not the start of a zstd frame")
        if active:
            raise _fail(f"{active[0].range.what}: range runs past the data frames")
        assembler.finish()
        if source_tar is not None and source_tar.read(1):
            raise _fail("the source tar is longer than the decompressed stream")
        for name, position in toc_positions.items():
            if assembler.content_positions.get(name) != position:
                raise _fail(f"{name}: TOC offset points at other bytes than the tar-split places the file")
        digest = "sha256:" + stream_digest.hexdigest()
        if diff_id is not None and digest != diff_id:
            raise _fail(f"decompressed stream digest {digest} is not the diff_id {diff_id}")
        chunked = [e for e in self.entries if "chunkDigest" in e]
        return LayerReport(
            entries=len(self.entries),
            files=sum(1 for e in self.entries if e["type"] == "reg"),
            chunks=len(chunked),
            zeros_chunks=sum(1 for e in chunked if e.get("chunkType") == "zeros"),
            frames=frames,
            diff_id=digest,
            tar_size=tar_size,
        )

    # -- filesystem -----------------------------------------------------------------------

    def apply_to(self, tree: FsTree) -> None:
        """Apply this layer's TOC to `tree` with OCI whiteout semantics."""
        added_here: set[str] = set()
        for entry in self.entries:
            if entry["type"] == "chunk":
                continue
            path = normalize(entry["name"])
            directory, base = os.path.split(path)
            if base == OPAQUE_MARKER:
                for child in tree.children_recursive(directory):
                    if child not in added_here:
                        tree.remove(child)
                continue
            if base.startswith(WHITEOUT_PREFIX):
                tree.remove(os.path.join(directory, base[len(WHITEOUT_PREFIX) :]))
                continue
            if entry["type"] == "hardlink":
                tree.link(path, entry.get("linkName", ""))
            else:
                tree.add(path, _node(entry))
            added_here.add(path)

    def to_fstree(self) -> FsTree:
        tree = FsTree()
        self.apply_to(tree)
        return tree


def tree_from_readers(layers: Iterable[ZstdChunkedReader]) -> FsTree:
    """The filesystem of an image whose layers (in order) are these zstd:chunked blobs."""
    tree = FsTree()
    for layer in layers:
        layer.apply_to(tree)
    return tree


@dataclass(frozen=True)
class _Range:
    start: int
    end: int
    size: int
    digest: str
    what: str
    is_file: bool = False


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
            raise _fail(f"{self.range.what}: {self._size} bytes, the TOC says {self.range.size}")
        if "sha256:" + self._hash.hexdigest() != self.range.digest:
            raise _fail(f"{self.range.what}: content digest does not match the TOC")


class _TarSplitAssembler:
    """Checks the decompressed stream against tar-split segments and file CRC-64s, in order."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self._lines = iter(lines)
        self._segment = b""  # rest of the current segment still to match
        self._file_left = 0
        self._file_crc: int | None = None
        self._expected_crc = b""
        self._file_name = ""
        self.position = 0
        self.content_positions: dict[str, int] = {}

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._segment:
                step = min(len(self._segment), len(view))
                if view[:step] != self._segment[:step]:
                    raise _fail(f"stream differs from the tar-split segment at byte {self.position}")
                self._segment = self._segment[step:]
            elif self._file_left:
                step = min(self._file_left, len(view))
                self._file_crc = fastcrc.crc64.go_iso(bytes(view[:step]), self._file_crc)
                self._file_left -= step
                if not self._file_left:
                    self._end_file()
            else:
                self._next_line(required=True)
                continue
            view = view[step:]
            self.position += step

    def _next_line(self, required: bool) -> bool:
        line = next(self._lines, None)
        if line is None:
            if required:
                raise _fail(f"stream continues after the tar-split ends (byte {self.position})")
            return False
        if line.get("type") == 2:
            self._segment = base64.b64decode(line.get("payload") or "")
        elif line.get("type") == 1:
            self._file_name = _tar_split_name(line)
            self.content_positions[self._file_name] = self.position
            self._file_left = line.get("size", 0)
            self._file_crc = None
            self._expected_crc = base64.b64decode(line["payload"]) if line.get("payload") else b""
            if not self._file_left:
                self._end_file()
        else:
            raise _fail(f"unexpected tar-split entry type {line.get('type')!r}")
        return True

    def _end_file(self) -> None:
        if self._file_crc is not None and self._file_crc.to_bytes(8, "big") != self._expected_crc:
            raise _fail(f"{self._file_name}: content does not match the tar-split CRC-64")

    def finish(self) -> None:
        if self._segment or self._file_left:
            raise _fail("stream ends inside a tar-split entry")
        while self._next_line(required=False):
            if self._segment or self._file_left:
                raise _fail("tar-split describes more bytes than the stream holds")


def _frame_end(f: BinaryIO, start: int, limit: int) -> int:
    """End offset of the zstd frame at `start`, from its frame and block headers (RFC 8878)."""
    f.seek(start)
    header = f.read(6)
    if len(header) < 6 or header[:4] != _ZSTD_MAGIC:
        raise _fail(f"no zstd frame starts at offset {start}")
    descriptor = header[4]
    single_segment = descriptor >> 5 & 1
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    position = start + 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size_bytes
    while True:
        f.seek(position)
        block = f.read(3)
        if len(block) < 3:
            raise _fail(f"truncated zstd frame at offset {start}")
        value = int.from_bytes(block, "little")
        kind, size = value >> 1 & 3, value >> 3
        if kind == 3:
            raise _fail(f"reserved zstd block type in the frame at offset {start}")
        position += 3 + (1 if kind == 1 else size)
        if value & 1:
            break
    position += 4 if descriptor >> 2 & 1 else 0  # content checksum
    if position > limit:
        raise _fail(f"zstd frame at offset {start} runs into the TOC")
    return position


class _Bounded(io.RawIOBase):
    """The next `size` bytes of `f`, as a stream of their own."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(min(len(buffer), self._left))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _pieces(reader: zstandard.ZstdDecompressionReader, start: int) -> Iterator[bytes]:
    try:
        while piece := reader.read(1 << 20):
            yield piece
    except zstandard.ZstdError as exc:
        raise _fail(f"bad zstd frame at offset {start}: {exc}") from None


def _tar_split_name(line: dict[str, Any]) -> str:
    if "name_raw" in line:
        return base64.b64decode(line["name_raw"]).decode("utf-8", "surrogateescape")
    name = line.get("name", "")
    return name if isinstance(name, str) else ""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size and (more := stream.read(size - len(data))):
        data += more
    return data


def _toc_name(info: tarfile.TarInfo, pending: Mapping[str, dict[str, Any]]) -> str:
    """tarfile drops a directory's trailing slashes; find the TOC's spelling of the name."""
    if info.name in pending or not info.isdir():
        return info.name
    return next((n for n in (info.name + "/", info.name + "//") if n in pending), info.name)


def _pax_time(value: str) -> tuple[int, int]:
    seconds, _, fraction = value.partition(".")
    sec = int(seconds)
    nsec = int(fraction[:9].ljust(9, "0")) if fraction else 0
    total = sec * 1_000_000_000 + (-nsec if seconds.startswith("-") else nsec)
    return total // 1_000_000_000, total % 1_000_000_000


def _tar_time(info: tarfile.TarInfo, block: bytes, key: str) -> tuple[int, int] | None:
    """A header time as Go's tar reader sees it: PAX record, else USTAR mtime / GNU atime, ctime."""
    if info.pax_headers.get(key):
        stamp: tuple[int, int] | None = _pax_time(info.pax_headers[key])
    elif key == "mtime":
        stamp = (int(info.mtime), 0)
    elif block[257:265] == b"ustar  \0" and block[345 if key == "atime" else 357]:
        field = block[345:357] if key == "atime" else block[357:369]
        stamp = (int(field.strip(b" \0") or b"0", 8), 0)
    else:
        stamp = None
    return None if stamp == (0, 0) else stamp


def _toc_time(entry: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    stamp = parse_toc_time(entry[key]) if entry.get(key) else None
    return None if stamp in ((0, 0), (-62135596800, 0)) else stamp  # Unix 0 and Go's zero time


def _compare(entry: Mapping[str, Any], info: tarfile.TarInfo, block: bytes) -> Iterator[tuple[str, Any, Any]]:
    tar_type = tarfile.REGTYPE if info.type == tarfile.AREGTYPE else info.type
    yield "type", _TYPES.get(entry["type"]), tar_type
    yield "linkName", entry.get("linkName", ""), info.linkname
    yield "mode", entry.get("mode", 0), info.mode
    yield "size", entry.get("size", 0), info.size
    yield "uid", entry.get("uid", 0), info.uid
    yield "gid", entry.get("gid", 0), info.gid
    yield "modtime", _toc_time(entry, "modtime"), _tar_time(info, block, "mtime")
    yield "accesstime", _toc_time(entry, "accesstime"), _tar_time(info, block, "atime")
    yield "changetime", _toc_time(entry, "changetime"), _tar_time(info, block, "ctime")
    yield "devMajor", entry.get("devMajor", 0), info.devmajor
    yield "devMinor", entry.get("devMinor", 0), info.devminor
    try:
        xattrs = {k: base64.b64decode(v, validate=True) for k, v in entry.get("xattrs", {}).items()}
    except (binascii.Error, AttributeError):
        xattrs = {"<undecodable>": b""}
    yield "xattrs", xattrs, tarinfo_xattrs(info)


_KINDS = {"reg": "reg", "dir": "dir", "symlink": "symlink", "char": "char", "block": "block", "fifo": "fifo"}


def _node(entry: Mapping[str, Any]) -> Node:
    stamp = _toc_time(entry, "modtime")
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
