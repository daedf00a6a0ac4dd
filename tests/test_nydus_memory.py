"""Memory bounds of the Nydus writer and reader on a layer of many small files (the 1 M-entry goal,
scaled down).

Python memory traced while converting a layer and merging its bootstrap, per tar entry. The
writer used to peak at ~1.9 KB per entry here (a tree of Python objects plus whole bootstraps in
memory); a layer of a million files needed 2.2 GB. Plain files are packed records in one table per
directory now, a record naming its chunk by CI index in the blob being written, whose digests wait
in a temp file (~140-150 B an entry here, ~260-300 before). The reader
`acceld check` uses held the whole bootstrap, every inode, path and claimed byte range: ~2.8 KB
per entry. No timing is asserted.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.tars import write_small_files

from acceld.formats.driver import LayerBlob, SourceLayer
from acceld.formats.nydus import NydusDriver
from acceld.formats.nydus.reader import RafsImage

ENTRIES = 20_000
CONVERT_LIMIT = 200  # bytes of traced Python memory per entry, convert_layer's peak (now ~140-150)
PER_ENTRY_LIMIT = 330  # the same, finalize's peak (now ~245)
READER_LIMIT = 300  # the reader's open + verify + walk (now ~150 here; a fixed part is spread on 20 k)
SOURCE = SourceLayer("sha256:" + "0" * 64, "application/vnd.oci.image.layer.v1.tar", 0, "sha256:" + "0" * 64)


def _peak_per_entry(action: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1] / ENTRIES
    finally:
        tracemalloc.stop()


def test_many_small_files_convert_within_a_per_entry_memory_bound(tmp_path: Path) -> None:
    tar = tmp_path / "layer.tar"
    write_small_files(tar, ENTRIES)
    driver = NydusDriver()
    blob = tmp_path / "layer.blob"
    outputs = []

    def convert() -> None:
        with tar.open("rb") as source, blob.open("wb") as out:
            outputs.append(driver.convert_layer(source, out, SOURCE, tmp_path))

    convert_peak = _peak_per_entry(convert)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    layer = LayerBlob(blob, outputs[0].media_type, digest, blob.stat().st_size, outputs[0].diff_id)
    additions = []
    finalize_peak = _peak_per_entry(lambda: additions.append(driver.finalize([layer], tmp_path)))

    # the result is a whole, valid image: every file is there
    (bootstrap_layer,) = additions[0].extra_layers
    image = RafsImage.from_bootstrap_layer(bootstrap_layer.path, {digest.removeprefix("sha256:"): blob})
    assert sum(1 for path, _ in image.list_tree() if "/f" in path) == ENTRIES
    assert b"".join(image.read_file("/d0019/f999")) == b"19999\n"

    assert convert_peak < CONVERT_LIMIT, f"convert_layer: {convert_peak:.0f} B per entry"
    assert finalize_peak < PER_ENTRY_LIMIT, f"finalize: {finalize_peak:.0f} B per entry"


@pytest.fixture(scope="module")
def small_files_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The bootstrap layer and blob of a converted 20 000-file layer, built once."""
    root = tmp_path_factory.mktemp("nydus-small-files")
    tar = write_small_files(root / "layer.tar", ENTRIES)
    driver = NydusDriver()
    blob = root / "layer.blob"
    with tar.open("rb") as source, blob.open("wb") as out:
        output = driver.convert_layer(source, out, SOURCE, root)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    layer = LayerBlob(blob, output.media_type, digest, blob.stat().st_size, output.diff_id)
    (bootstrap_layer,) = driver.finalize([layer], root).extra_layers
    return bootstrap_layer.path, {digest.removeprefix("sha256:"): blob}


def test_reader_checks_many_small_files_within_a_per_entry_memory_bound(
    small_files_image: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    """Open, verify and walk the image as `acceld check` does (without building its FsTree)."""
    bootstrap_layer, blobs = small_files_image
    found = []

    def check() -> None:
        image = RafsImage.from_bootstrap_layer(bootstrap_layer, blobs, workdir=tmp_path)
        image.verify()
        found.append(sum(1 for path, _ in image.list_tree() if "/f" in path))
        found.append(b"".join(image.read_file("/d0019/f999")))

    peak = _peak_per_entry(check)
    assert found == [ENTRIES, b"19999\n"]
    assert peak < READER_LIMIT, f"reader: {peak:.0f} B per entry"
