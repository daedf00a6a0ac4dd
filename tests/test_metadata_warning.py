"""`acceld convert` warns when a layer's TOC or tar-split exceeds max_metadata_bytes.

Readers that keep to that limit (`acceld check`; containers/storage's maxTocSize, its default, for
zstd:chunked) refuse such a layer, so converting it silently would hand out an image they cannot
read. A layer of 1 M small files has a 322 MB eStargz TOC; here a small layer meets a small limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.clients import acceld
from harness.images import build_image
from harness.tars import write_small_files

LIMIT = 16_384
# driver -> the metadata parts over LIMIT for 400 small files
PARTS = {"estargz": ["TOC"], "zstdchunked": ["TOC", "tar-split"]}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metadata-warning")
    build_image(root / "layout", [write_small_files(root / "files.tar", 400)], "files")
    return root / "layout"


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("driver", PARTS)
def test_convert_warns_of_metadata_over_the_limit(driver: str, layout: Path, tmp_path: Path) -> None:
    target = f"oci:{layout}:{driver}-small-limit"
    limit = ("--limit", f"max_metadata_bytes={LIMIT}")
    result = acceld("convert", f"oci:{layout}:files", target, "-d", driver, *limit, cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = _warnings(result.stderr)
    assert len(warnings) == len(PARTS[driver]), result.stderr
    for part, line in zip(PARTS[driver], warnings, strict=True):
        assert f"its {part} is " in line and f"over max_metadata_bytes ({LIMIT:,})" in line, line
        assert "layer sha256:" in line and "\n" not in line
    refused = acceld("check", target, *limit, cache=tmp_path / "c")
    assert refused.returncode == 1 and "max_metadata_bytes" in refused.stdout, refused.stdout
    # the default limit: no warning, and check reads the same layer
    plain = f"oci:{layout}:{driver}-default"
    result = acceld("convert", f"oci:{layout}:files", plain, "-d", driver, "--no-cache", cache=tmp_path / "c")
    assert result.returncode == 0 and not _warnings(result.stderr), result.stderr[-2000:]
    checked = acceld("check", plain, cache=tmp_path / "c")
    assert checked.returncode == 0, checked.stdout
