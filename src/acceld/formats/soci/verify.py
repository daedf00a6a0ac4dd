"""Verifying one zTOC against its layer blob, as `acceld check` does (soci.md §13, items 6 to 9).

The zTOC is decoded; its zinfo checkpoints must be well-formed and every span must hash to its
digest and inflate, from its checkpoint, to exactly the bytes a straight decompression of the
layer gives at that place; the TOC must list the layer's tar entries (read by Python's `tarfile`,
not by the writer's scanner) with their types, sizes, owners, modes, times and data offsets.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import itertools
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from isal import igzip

from acceld.formats.checkpoints import inflate_from
from acceld.formats.driver import FormatError
from acceld.formats.soci.toc import BLOCK, FileMetadata
from acceld.formats.soci.zinfo import read_gzip_zinfo, read_tar_zinfo, tar_span_count
from acceld.formats.soci.ztoc import GZIP, UNCOMPRESSED, VERSION, Ztoc
from acceld.formats.soci.ztoc_reader import read_ztoc

_TAR_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class ZtocReport:
    entries: int
    spans: int


def _problem(what: str) -> FormatError:
    return FormatError(what)


def gzip_header_length(head: bytes) -> int:
    """Length of the gzip member header at the start of `head` (FEXTRA, FNAME, FCOMMENT, FHCRC)."""
    if len(head) < 10 or head[:3] != b"\x1f\x8b\x08":
        raise _problem("the layer does not start with a gzip header")
    flags, at = head[3], 10
    if flags & 4:
        at += 2 + int.from_bytes(head[at : at + 2], "little")
    for flag in (8, 16):
        if flags & flag:
            at = head.index(b"\0", at) + 1
    if flags & 2:
        at += 2
    return at


def verify_ztoc(
    data: bytes, layer: Path, layer_size: int, compression: str, span_size: int | None
) -> ZtocReport:
    """Raise FormatError naming the first problem; the report counts what was checked."""
    ztoc = read_ztoc(data)
    if ztoc.version != VERSION:
        raise _problem(f"zTOC version {ztoc.version!r}, expected {VERSION!r}")
    expected = GZIP if compression == "gzip" else UNCOMPRESSED
    if ztoc.algorithm != expected:
        raise _problem(f"zTOC compression algorithm {ztoc.algorithm} for a {compression} layer")
    if ztoc.compressed_archive_size != layer_size:
        raise _problem(f"compressed_archive_size {ztoc.compressed_archive_size} != layer size {layer_size}")
    if len(ztoc.span_digests) != ztoc.max_span_id + 1:
        raise _problem(f"{len(ztoc.span_digests)} span digests for max_span_id {ztoc.max_span_id}")
    if expected == GZIP:
        total = _verify_gzip_spans(ztoc, layer, span_size)
    else:
        total = _verify_tar_spans(ztoc, layer, span_size)
    _verify_toc(ztoc, layer, compression, total)
    return ZtocReport(entries=len(ztoc.entries), spans=len(ztoc.span_digests))


def _open_content(layer: Path, compression: str) -> BinaryIO:
    blob = layer.open("rb")
    if compression == "gzip":
        return cast(BinaryIO, igzip.IGzipFile(fileobj=blob, mode="rb"))  # type: ignore[no-untyped-call]
    return blob


def _verify_gzip_spans(ztoc: Ztoc, layer: Path, span_size: int | None) -> int:
    zinfo_span, points = read_gzip_zinfo(ztoc.checkpoints)
    if len(points) != len(ztoc.span_digests):
        raise _problem(f"{len(points)} checkpoints for {len(ztoc.span_digests)} spans")
    if span_size is not None and zinfo_span != span_size:
        raise _problem(f"zinfo span size {zinfo_span} != annotation {span_size}")
    with layer.open("rb") as blob:
        header = gzip_header_length(blob.read(65536))
        first = points[0]
        if (first.compressed_offset, first.uncompressed_offset, first.bits) != (header, 0, 0):
            raise _problem(
                f"checkpoint 0 is {first.compressed_offset}/{first.uncompressed_offset}/{first.bits}"
            )
        for before, after in itertools.pairwise(points):
            if not (
                after.compressed_offset > before.compressed_offset
                and after.uncompressed_offset > before.uncompressed_offset
            ):
                raise _problem("checkpoints are not strictly increasing")
        if (
            any(p.bits > 7 for p in points)
            or points[-1].uncompressed_offset >= ztoc.uncompressed_archive_size
        ):
            raise _problem("a checkpoint has bits > 7 or starts after the archive")
        with _open_content(layer, "gzip") as content:
            for number, point in enumerate(points):
                last = number + 1 == len(points)
                start = point.compressed_offset - (1 if point.bits else 0)
                end = ztoc.compressed_archive_size if last else points[number + 1].compressed_offset
                stop = ztoc.uncompressed_archive_size if last else points[number + 1].uncompressed_offset
                blob.seek(start)
                span = blob.read(end - start)
                if "sha256:" + hashlib.sha256(span).hexdigest() != ztoc.span_digests[number]:
                    raise _problem(f"span {number}: digest mismatch")
                want = stop - point.uncompressed_offset
                if inflate_from(span, point.bits, point.window, want) != content.read(want):
                    raise _problem(f"span {number}: inflating from its checkpoint differs from the layer")
            rest = sum(len(piece) for piece in iter(lambda: content.read(1 << 20), b""))
    return ztoc.uncompressed_archive_size + rest


def _verify_tar_spans(ztoc: Ztoc, layer: Path, span_size: int | None) -> int:
    version, zinfo_span, size = read_tar_zinfo(ztoc.checkpoints)
    if (
        version != 2
        or size != ztoc.compressed_archive_size
        or (span_size is not None and zinfo_span != span_size)
    ):
        raise _problem(f"tar zinfo version {version}, span {zinfo_span}, size {size} do not match")
    if tar_span_count(size, zinfo_span) != len(ztoc.span_digests):
        raise _problem(f"{len(ztoc.span_digests)} span digests for {size} bytes in spans of {zinfo_span}")
    with layer.open("rb") as blob:
        for number, digest in enumerate(ztoc.span_digests):
            if "sha256:" + hashlib.sha256(blob.read(zinfo_span)).hexdigest() != digest:
                raise _problem(f"span {number}: digest mismatch")
    return size


def _mtime(entry: FileMetadata) -> float:
    stamp = datetime.datetime.fromisoformat(entry.mod_time.replace("Z", "+00:00"))
    return stamp.timestamp()


def _verify_toc(ztoc: Ztoc, layer: Path, compression: str, total: int) -> None:
    entries = list(ztoc.entries)
    end = 0
    for entry in entries:
        if entry.uncompressed_offset < end:
            raise _problem(f"TOC entry {entry.name!r} overlaps the previous entry")
        end = entry.uncompressed_offset + entry.uncompressed_size + (-entry.uncompressed_size % BLOCK)
    if not end <= ztoc.uncompressed_archive_size <= total:
        size = ztoc.uncompressed_archive_size
        raise _problem(f"uncompressed_archive_size {size} is outside [{end}, {total}]")
    with _open_content(layer, compression) as content:
        stream = io.BufferedReader(cast(io.RawIOBase, content))
        archive = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed with the stream
        members = iter(archive)
        for number, entry in enumerate(entries):
            member = next(members, None)
            if member is None:
                raise _problem(f"TOC has {len(entries)} entries, the layer only {number}")
            _compare(entry, member)
        if next(members, None) is not None:
            raise _problem(f"the layer has more entries than the TOC's {len(entries)}")


def _compare(entry: FileMetadata, member: tarfile.TarInfo) -> None:
    kind = _TAR_TYPES.get(member.type, "?")
    checks = {
        "name": (entry.name.rstrip("/"), member.name.rstrip("/")),
        "type": (entry.type, kind),
        "offset": (entry.uncompressed_offset, member.offset_data),
        "size": (entry.uncompressed_size, member.size if kind == "reg" else 0),
        "linkname": (entry.linkname, member.linkname),
        "mode": (entry.mode & 0o7777, member.mode & 0o7777),
        "uid/gid": ((entry.uid, entry.gid), (member.uid, member.gid)),
        "owner names": ((entry.uname, entry.gname), (member.uname, member.gname)),
        "mtime": (int(_mtime(entry)), int(member.mtime)),
    }
    for field, (have, want) in checks.items():
        if have != want:
            raise _problem(f"TOC entry {entry.name!r}: {field} {have!r}, the layer has {want!r}")
