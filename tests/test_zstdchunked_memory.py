"""zstd:chunked conversion of a layer of many tiny files keeps its per-entry metadata on disk.

Before the TOC and tar-split names were spooled, 100 000 files of a few bytes took a converting
process to ~400 MB; with them spooled it stays near the interpreter's own ~70 MB.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from harness.peaks import run_with_peaks
from harness.tars import write_small_files

FILES = 100_000
MAX_RSS = 130 << 20  # the interpreter with numpy and zstandard imported: ~60 MB
_CONVERT = """
import sys
from pathlib import Path
from acceld.formats.zstdchunked.writer import write_zstd_chunked
with open(sys.argv[1], "rb") as tar, open(sys.argv[2], "wb") as out:
    write_zstd_chunked(tar, out, Path(sys.argv[3]), workers=2)
"""


def test_many_tiny_files_convert_in_bounded_memory(tmp_path: Path) -> None:
    tar, blob, work = tmp_path / "many.tar", tmp_path / "many.zst", tmp_path / "work"
    work.mkdir()
    write_small_files(tar, FILES, body=lambda _: b"x\n")
    peaks = run_with_peaks(
        [sys.executable, "-c", _CONVERT, str(tar), str(blob), str(work)], env={}, timeout=600
    )
    assert peaks.returncode == 0, peaks.stderr
    footer = blob.read_bytes()[-72:]  # skippable frame header, 7 numbers, magic
    toc_size, tar_split_size = struct.unpack("<7Q", footer[8:64])[2::4]
    # a TOC this large is streamed through the spool, not compressed in one piece
    assert toc_size > FILES * 150 and tar_split_size > FILES * 1000
    assert list(work.iterdir()) == []
    assert peaks.rss_bytes < MAX_RSS, f"peak RSS {peaks.rss_bytes >> 20} MiB for {FILES} files"
