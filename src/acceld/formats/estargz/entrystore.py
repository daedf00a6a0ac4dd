"""The layer's tar entries on disk: one marshalled record each in a temp file, with only compact
arrays in memory, so that a layer of a million small files does not hold a million Python objects.
"""

from __future__ import annotations

from array import array
from pathlib import Path

from acceld.formats.estargz.tarscan import TarEntry
from acceld.formats.records import RecordFile


class EntryStore:
    """Append-only list of `TarEntry`; append all, then `seal`, then read by index.

    `keys[i]` is `hash()` of entry i's cleaned name (equal names have equal keys within this process).
    """

    def __init__(self, workdir: Path) -> None:
        self._records = RecordFile(workdir, "estargz-entries-")
        self.keys = array("q")

    def append(self, entry: TarEntry, key: int) -> None:
        self._records.append(
            (
                entry.name,
                entry.typeflag,
                entry.linkname,
                entry.size,
                entry.mode,
                entry.uid,
                entry.gid,
                entry.uname,
                entry.gname,
                entry.mtime_ns,
                entry.devmajor,
                entry.devminor,
                entry.xattrs,
                entry.header_offset,
                entry.data_offset,
                entry.digest,
                entry.chunk_digests,
            )
        )
        self.keys.append(key)

    def seal(self) -> None:
        """Stop appending; records can be read from now on."""
        self._records.seal()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> TarEntry:
        return TarEntry(*self._records[index])

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> EntryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
