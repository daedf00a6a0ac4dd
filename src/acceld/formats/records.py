"""Marshalled values in an unnamed temp file, for the per-entry metadata of layers of a million
entries (the eStargz writer and reader, the zstd:chunked reader): memory holds one 8-byte offset per record.

Records are read back by index through one buffered reader (ascending indexes cost no system call
each), or in order by any number of iterations at once, each with its own position.
"""

from __future__ import annotations

import io
import marshal
import os
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

_BUFFER = 1 << 20


class RecordFile:
    """Append-only list of marshal-able values: append all, then `seal`, then read."""

    def __init__(self, directory: Path | None, prefix: str) -> None:
        # all three are closed by close()
        self._file = tempfile.TemporaryFile(dir=directory, prefix=prefix)  # noqa: SIM115
        self._writer: BinaryIO | None = open(  # noqa: SIM115
            self._file.fileno(), "wb", buffering=_BUFFER, closefd=False
        )
        self._reader: BinaryIO | None = None
        self._ends = array("Q", [0])  # record i is bytes _ends[i] .. _ends[i + 1]

    def append(self, value: Any) -> None:
        assert self._writer is not None
        record = marshal.dumps(value)
        self._writer.write(record)
        self._ends.append(self._ends[-1] + len(record))

    def seal(self) -> None:
        """Stop appending; records can be read from now on."""
        assert self._writer is not None
        self._writer.close()
        self._writer = None
        self._reader = open(self._file.fileno(), "rb", buffering=_BUFFER, closefd=False)  # noqa: SIM115

    def __len__(self) -> int:
        return len(self._ends) - 1

    def __getitem__(self, index: int) -> Any:
        assert self._reader is not None
        start = self._ends[index]
        self._reader.seek(start)  # within the buffer: no system call
        return marshal.loads(self._reader.read(self._ends[index + 1] - start))

    def __iter__(self) -> Iterator[Any]:
        assert self._writer is None, "seal() first"
        with io.BufferedReader(_PositionalReader(self._file.fileno()), _BUFFER) as reader:
            for index in range(len(self)):
                yield marshal.loads(reader.read(self._ends[index + 1] - self._ends[index]))

    def close(self) -> None:
        for stream in (self._writer, self._reader):
            if stream is not None:
                stream.close()
        self._file.close()

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PositionalReader(io.RawIOBase):
    """Reads a file descriptor from the start with its own position, so that several iterations
    over one file can run at once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = os.pread(self._fd, len(buffer), self._position)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
