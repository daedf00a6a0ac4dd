"""The layer's tar entries on disk: one marshalled record each in a temp file, with only compact
arrays in memory, so that a layer of a million small files does not hold a million Python objects.

Records are read back by index; reads in ascending order go through one buffered reader, so a pass
over the entries costs a file read and a `marshal.loads` per entry.
"""

from __future__ import annotations

import marshal
import tempfile
from array import array
from pathlib import Path
from typing import BinaryIO

from acceld.formats.estargz.tarscan import TarEntry

_BUFFER = 1 << 20


class EntryStore:
    """Append-only list of `TarEntry`; append all, then `seal`, then read by index.

    `keys[i]` is `hash()` of entry i's cleaned name (equal names have equal keys within this process).
    """

    def __init__(self, workdir: Path) -> None:
        # all three are closed by close()
        self._file = tempfile.TemporaryFile(dir=workdir, prefix="estargz-entries-")  # noqa: SIM115
        self._writer: BinaryIO | None = open(  # noqa: SIM115
            self._file.fileno(), "wb", buffering=_BUFFER, closefd=False
        )
        self._reader: BinaryIO | None = None
        self._ends = array("Q", [0])  # record i is bytes _ends[i] .. _ends[i + 1]
        self.keys = array("q")

    def append(self, entry: TarEntry, key: int) -> None:
        assert self._writer is not None
        record = marshal.dumps(
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
        self._writer.write(record)
        self._ends.append(self._ends[-1] + len(record))
        self.keys.append(key)

    def seal(self) -> None:
        """Stop appending; records can be read from now on."""
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        self._reader = open(self._file.fileno(), "rb", buffering=_BUFFER, closefd=False)  # noqa: SIM115

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> TarEntry:
        assert self._reader is not None
        start = self._ends[index]
        self._reader.seek(start)  # within the buffer: no system call
        return TarEntry(*marshal.loads(self._reader.read(self._ends[index + 1] - start)))

    def close(self) -> None:
        for stream in (self._writer, self._reader):
            if stream is not None:
                stream.close()
        self._file.close()

    def __enter__(self) -> EntryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
