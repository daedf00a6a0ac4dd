"""Memory per path of the trees `acceld check` compares (issue 10: a layer of 1 M small files).

`check` builds the source image's tree and the converted image's tree and diffs them; each step
here does the same with one layer of small files, in a fresh interpreter that reports its peak RSS.
The bound is on the slope between a small and a larger layer, so interpreter, imports and the
trees' bounded page caches cancel out. Trees held as Python objects cost ~900 bytes per path.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from harness.peaks import interpreter_peak
from harness.tars import write_small_files

SMALL, LARGE = 20_000, 100_000
MAX_BYTES_PER_PATH = 200

_STEP = r"""
import sys
from pathlib import Path
from acceld.formats.fstree import FsTree, apply_layer_tar, diff_trees
tar, work = sys.argv[1:3]
trees = []
for _ in range(2):
    tree = FsTree(Path(work))
    with open(tar, "rb") as layer:
        apply_layer_tar(tree, layer)
    trees.append(tree)
differences = diff_trees(*trees, mtime_tolerance=1)
assert differences == [], differences[:5]
assert len(trees[0]) == int(sys.argv[3]) + int(sys.argv[3]) // 1000 + 1, len(trees[0])
for tree in trees:
    tree.close()
assert not list(Path(work).iterdir()), "a tree left its database behind"
"""


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("check-memory")
    return {
        count: write_small_files(
            root / f"{count}.tar", count, body=lambda _: b"", tar_format=tarfile.PAX_FORMAT
        )
        for count in (SMALL, LARGE)
    }


def _peak(tar: Path, work: Path, count: int) -> int:
    work.mkdir()
    return interpreter_peak(_STEP, str(tar), str(work), str(count))


def test_compared_trees_cost_little_memory_per_path(layers: dict[int, Path], tmp_path: Path) -> None:
    peaks = {count: _peak(tar, tmp_path / str(count), count) for count, tar in layers.items()}
    per_path = (peaks[LARGE] - peaks[SMALL]) / (LARGE - SMALL)
    print(f"two trees and their diff: peak RSS {peaks}, {per_path:.0f} bytes per path")
    assert per_path < MAX_BYTES_PER_PATH, f"{per_path:.0f} bytes of peak RSS per path"
