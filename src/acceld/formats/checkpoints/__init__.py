"""Deflate checkpoints of gzip blobs, shared by the SOCI and Nydus zran formats.

`CheckpointingReader` streams a gzip blob once and records checkpoints at deflate block
boundaries chosen by a policy (`every(spacing)` is SOCI's); `inflate_from` decodes from a
checkpoint. Both use the system zlib (`zlib.py`), whose `Z_BLOCK`, `inflatePrime` and raw
`inflateSetDictionary` the stdlib module does not expose.
"""

from acceld.formats.checkpoints.reader import (
    WINDOW_SIZE,
    Checkpoint,
    CheckpointingReader,
    Policy,
    WindowStore,
    every,
)
from acceld.formats.checkpoints.resume import inflate_from

__all__ = [
    "WINDOW_SIZE",
    "Checkpoint",
    "CheckpointingReader",
    "Policy",
    "WindowStore",
    "every",
    "inflate_from",
]
