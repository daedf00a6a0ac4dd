"""The zTOC flatbuffer (soci's `ztoc.fbs`): writing it (with `flatwriter`; `ztoc_reader` reads it back).

Tables and field ids: Ztoc {0 version, 1 build_tool_identifier, 2 compressed_archive_size,
3 uncompressed_archive_size, 4 toc, 5 compression_info}; TOC {0 metadata}; FileMetadata {0 name,
1 type, 2 uncompressed_offset, 3 uncompressed_size, 4 linkname, 5 mode, 6 uid, 7 gid, 8 uname,
9 gname, 10 mod_time, 11 devmajor, 12 devminor, 13 xattrs}; Xattr {0 key, 1 value};
CompressionInfo {0 compression_algorithm (byte enum, Gzip = 1 default, Uncompressed = 2),
1 max_span_id, 2 span_digests, 3 checkpoints}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from acceld.formats.soci.flatwriter import BYTE, INT, LONG, OFFSET, UINT, Field, FlatWriter
from acceld.formats.soci.toc import FileMetadata

VERSION = "0.9"
GZIP, UNCOMPRESSED = 1, 2
ALGORITHMS = {GZIP: "gzip", UNCOMPRESSED: "uncompressed"}


@dataclass(frozen=True)
class Ztoc:
    version: str
    build_tool: str
    compressed_archive_size: int
    uncompressed_archive_size: int
    entries: Sequence[FileMetadata]
    algorithm: int
    max_span_id: int
    span_digests: Sequence[str]
    checkpoints: bytes


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class ZtocWriter:
    """Builds a zTOC: file entries as the tar scan finds them, then the rest in `finish`.

    Memory: the encoded tables (≈ 150 bytes per entry) and the strings written once and shared
    (types, owners, times, link targets, PAX records; names are not shared).
    """

    def __init__(self) -> None:
        self._writer = FlatWriter()
        self._checkpoints = self._writer.trailing_vector()
        self._files: list[int] = []
        self._shared: dict[str, int] = {}

    def _shared_string(self, value: str) -> int:
        at = self._shared.get(value)
        if at is None:
            at = self._shared[value] = self._writer.string(_text(value))
        return at

    def add(self, entry: FileMetadata) -> None:
        writer, shared = self._writer, self._shared_string
        fields: list[Field] = [
            (0, OFFSET, writer.string(_text(entry.name))),
            (1, OFFSET, shared(entry.type)),
            (4, OFFSET, shared(entry.linkname)),
            (8, OFFSET, shared(entry.uname)),
            (9, OFFSET, shared(entry.gname)),
            (10, OFFSET, shared(entry.mod_time)),
        ]
        if entry.xattrs:
            pairs = [(shared(key), shared(value)) for key, value in entry.xattrs]
            tables = [writer.table([(0, OFFSET, key), (1, OFFSET, value)]) for key, value in pairs]
            fields.append((13, OFFSET, writer.offsets(tables)))
        for slot, kind, value in (
            (2, LONG, entry.uncompressed_offset),
            (3, LONG, entry.uncompressed_size),
            (5, LONG, entry.mode),
            (6, UINT, entry.uid),
            (7, UINT, entry.gid),
            (11, LONG, entry.devmajor),
            (12, LONG, entry.devminor),
        ):
            if value:  # scalars at their default are left out, as flatbuffers writers do
                fields.append((slot, kind, value))
        self._files.append(writer.table(fields))

    @property
    def count(self) -> int:
        return len(self._files)

    def finish(
        self,
        header: Ztoc,
        out: BinaryIO,
        checkpoints_size: int,
        write_checkpoints: Callable[[BinaryIO], object],
    ) -> None:
        """Write the zTOC to `out` (`header.entries` and `header.checkpoints` are ignored).

        The `checkpoints` vector, the bulk of a zTOC (32 KiB per checkpoint), is not built in
        memory: its bytes follow the buffer in the file, written by `write_checkpoints` (exactly
        `checkpoints_size` bytes, streamed from the window file).
        """
        writer = self._writer
        toc = writer.table([(0, OFFSET, writer.offsets(self._files))])
        digests = writer.offsets([writer.string(_text(digest)) for digest in header.span_digests])
        info: list[Field] = []
        if header.algorithm != GZIP:
            info.append((0, BYTE, header.algorithm))
        if header.max_span_id:
            info.append((1, INT, header.max_span_id))
        info += [(2, OFFSET, digests), (3, OFFSET, self._checkpoints)]
        compression = writer.table(info)
        root: list[Field] = [
            (0, OFFSET, writer.string(_text(header.version))),
            (1, OFFSET, writer.string(_text(header.build_tool))),
        ]
        if header.compressed_archive_size:
            root.append((2, LONG, header.compressed_archive_size))
        if header.uncompressed_archive_size:
            root.append((3, LONG, header.uncompressed_archive_size))
        root += [(4, OFFSET, toc), (5, OFFSET, compression)]
        out.write(writer.finish(writer.table(root), checkpoints_size))
        write_checkpoints(out)


def write_ztoc(header: Ztoc, out: BinaryIO) -> None:
    """The zTOC of `header`, entries and checkpoints included."""
    writer = ZtocWriter()
    for entry in header.entries:
        writer.add(entry)
    writer.finish(header, out, len(header.checkpoints), lambda target: target.write(header.checkpoints))
