"""Memory per tar entry of the eStargz writer and reader (issue 10: a layer of 1 M small files).

Each step runs in a fresh interpreter that reports its peak RSS; the bound is on the slope between
a small and a larger layer, so interpreter, imports and I/O buffers cancel out (the writer's
one-shot member buffer, up to 2 x 16 MiB for the TOC, is capped lower for the same reason). Holding a Python
object per entry (a TarEntry, a TOC dict, a TarInfo) costs several hundred bytes per entry.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from harness.peaks import interpreter_peak
from harness.tars import write_small_files

SMALL, LARGE = 10_000, 80_000
MAX_BYTES_PER_ENTRY = 250

_STEP = r"""
import sys
from pathlib import Path
step, tar, blob = sys.argv[1:4]
if step == "convert":
    from acceld.formats.estargz import writer
    from acceld.formats.estargz.writer import WriterOptions, write_estargz
    writer._ONESHOT_LIMIT = 1 << 20  # the one-shot member buffer is a constant; keep it out of the slope
    with open(tar, "rb") as source, open(blob, "wb") as out:
        write_estargz(source, out, Path(blob).parent, WriterOptions(workers=2))
else:
    from acceld.formats.estargz.reader import EstargzLayer
    with open(blob, "rb") as source, EstargzLayer(source, directory=Path(blob).parent) as layer:
        report = layer.verify()
        assert report.entries == int(sys.argv[4]) + 1, report
"""


def _peak(step: str, tar: Path, blob: Path, count: int) -> int:
    return interpreter_peak(_STEP, step, str(tar), str(blob), str(count))


@pytest.mark.parametrize("step", ["convert", "verify"])
def test_memory_per_entry_is_bounded(step: str, tmp_path: Path) -> None:
    peaks = {}
    for count in (SMALL, LARGE):
        tar = write_small_files(
            tmp_path / f"{count}.tar", count, body=lambda _: b"", tar_format=tarfile.PAX_FORMAT
        )
        blob = tmp_path / f"{count}.esgz"
        if step == "verify":
            _peak("convert", tar, blob, count)
        peaks[count] = _peak(step, tar, blob, count)
    per_entry = (peaks[LARGE] - peaks[SMALL]) / (LARGE - SMALL)
    print(f"{step}: peak RSS {peaks}, {per_entry:.0f} bytes per entry")
    assert per_entry < MAX_BYTES_PER_ENTRY, f"{step}: {per_entry:.0f} bytes of peak RSS per tar entry"
