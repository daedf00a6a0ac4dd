"""zstd:chunked conversion and check of a layer of many tiny files keep their per-entry metadata on disk.

Before the TOC and tar-split names were spooled, 100 000 files of a few bytes took a converting
process to ~400 MB; with them spooled it stays near the interpreter's own ~70 MB.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from harness.peaks import Peaks, run_with_peaks
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
_CHECK = """
import sys
from pathlib import Path
from acceld.formats.zstdchunked.reader import ZstdChunkedReader, tree_from_readers
blob, work = Path(sys.argv[1]), Path(sys.argv[2])
with ZstdChunkedReader(blob, directory=work) as reader:
    report = reader.verify()
    with tree_from_readers([reader], work) as tree:
        assert len(tree) == report.files + report.files // 1000 + 1, (len(tree), report)
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Peaks, Path, Path]:
    """(peaks of the conversion, the blob, its work dir) for a layer of FILES tiny files."""
    root = tmp_path_factory.mktemp("zstd-memory")
    tar, blob, work = root / "many.tar", root / "many.zst", root / "work"
    work.mkdir()
    write_small_files(tar, FILES, body=lambda _: b"x\n")
    peaks = run_with_peaks(
        [sys.executable, "-c", _CONVERT, str(tar), str(blob), str(work)], env={}, timeout=600
    )
    tar.unlink()
    return peaks, blob, work


def test_many_tiny_files_convert_in_bounded_memory(converted: tuple[Peaks, Path, Path]) -> None:
    peaks, blob, work = converted
    assert peaks.returncode == 0, peaks.stderr
    footer = blob.read_bytes()[-72:]  # skippable frame header, 7 numbers, magic
    toc_size, tar_split_size = struct.unpack("<7Q", footer[8:64])[2::4]
    # a TOC this large is streamed through the spool, not compressed in one piece
    assert toc_size > FILES * 150 and tar_split_size > FILES * 1000
    assert list(work.iterdir()) == []
    assert peaks.rss_bytes < MAX_RSS, f"peak RSS {peaks.rss_bytes >> 20} MiB for {FILES} files"


def test_many_tiny_files_check_in_bounded_memory(converted: tuple[Peaks, Path, Path], tmp_path: Path) -> None:
    """What `acceld check` does with the layer (the reader's checks, its tree) stays near the
    interpreter's own size too: the TOC loaded with json.loads and the reader's per-name sets and
    dicts took ~200 MB for these files."""
    peaks, blob, _ = converted
    assert peaks.returncode == 0, peaks.stderr
    read = run_with_peaks([sys.executable, "-c", _CHECK, str(blob), str(tmp_path)], env={}, timeout=600)
    assert read.returncode == 0, read.stderr
    assert list(tmp_path.iterdir()) == [], "the reader left temp files behind"
    assert read.rss_bytes < MAX_RSS, f"peak RSS {read.rss_bytes >> 20} MiB checking {FILES} files"
