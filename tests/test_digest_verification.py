"""Source layers are verified with the algorithm their digests name (sha256, sha512), always.

A layout may store a layer under `blobs/sha512/…` and a config may list sha512 diff_ids; a blob
that does not match must fail the conversion with one line and never reach the layer cache
(where it would poison every later image with that digest). Digests that cannot be checked —
an empty diff_id, an unknown algorithm — are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from harness.clients import acceld
from harness.images import add_blob, canonical_json, init_layout, tag_in_index

from acceld.config import AcceldConfig
from acceld.convert.api import ConversionRequest, ConvertOptions, convert_image
from acceld.errors import AcceldError

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def tar_bytes(text: bytes = b"hello from a sha512 layer\n") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text * 100
        info = tarfile.TarInfo("etc/greeting")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def make_image(
    layout: Path,
    tag: str,
    *,
    layer_algorithm: str = "sha512",
    stored: bytes | None = None,
    diff_id: str | None = None,
    layer_digest: str | None = None,
) -> str:
    """Tag an image of one gzip layer; `stored` replaces the blob bytes kept under its digest."""
    init_layout(layout)
    tar = tar_bytes()
    blob = gzip.compress(tar, mtime=0)
    layer_digest = layer_digest or digest(layer_algorithm, blob)
    algorithm, _, hex_part = layer_digest.partition(":")
    (layout / "blobs" / algorithm).mkdir(exist_ok=True)
    (layout / "blobs" / algorithm / hex_part).write_bytes(stored if stored is not None else blob)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id if diff_id is not None else digest("sha512", tar)]},
    }
    config_desc = add_blob(layout, canonical_json(config), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(blob)}],
    }
    tag_in_index(layout, add_blob(layout, canonical_json(manifest), manifest["mediaType"]), tag)
    return layer_digest


async def convert(layout: Path, tag: str, cache: Path, driver: str = "estargz") -> tuple[int, int]:
    result = await convert_image(
        ConversionRequest(source=f"oci:{layout}:{tag}", driver=driver),
        AcceldConfig(),
        options=ConvertOptions(cache_dir=cache, workers=1),
    )
    return result.layers_converted, result.layers_cached


def flipped(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return bytes(damaged)


async def test_sha512_layer_and_diff_id_convert(tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "good")
    assert await convert(tmp_path / "layout", "good", tmp_path / "cache") == (1, 0)
    assert await convert(tmp_path / "layout", "good", tmp_path / "cache") == (0, 1)


async def test_mismatching_sha512_blob_fails_and_never_enters_the_cache(tmp_path: Path) -> None:
    """A well-formed but different layer under the genuine layer's sha512 digest, with a config
    consistent with what is stored (a poisoning attempt), fails on the blob digest."""
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    planted = tar_bytes(b"planted\n")
    layer_digest = make_image(
        layout, "bad", stored=gzip.compress(planted, mtime=0), diff_id=digest("sha256", planted)
    )
    with pytest.raises(AcceldError) as excinfo:
        await convert(layout, "bad", cache)
    text = str(excinfo.value)
    assert f"source layer {layer_digest}: blob has digest sha512:" in text and "\n" not in text

    # The genuine blob under the same digest is converted afresh, not served from the cache.
    make_image(layout, "good")
    assert await convert(layout, "good", cache) == (1, 0)


@pytest.mark.parametrize(
    ("diff_id", "message"),
    [
        ("sha512:" + "0" * 128, "uncompressed content has digest sha512:"),
        ("sha256:" + "0" * 64, "uncompressed content has digest sha256:"),
        ("", "invalid digest ''"),
        ("md5:" + "0" * 32, "unsupported digest algorithm"),
    ],
)
# zstd:chunked reports the diff_id the pipeline verifies instead of hashing the tar itself
@pytest.mark.parametrize("driver", ["estargz", "zstdchunked"])
async def test_diff_id_is_always_checked(tmp_path: Path, diff_id: str, message: str, driver: str) -> None:
    make_image(tmp_path / "layout", "img", diff_id=diff_id)
    with pytest.raises(AcceldError) as excinfo:
        await convert(tmp_path / "layout", "img", tmp_path / "cache", driver)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert not [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]


async def test_unknown_layer_digest_algorithm_is_refused(tmp_path: Path) -> None:
    make_image(tmp_path / "layout", "img", layer_digest="md5:" + "0" * 32)
    with pytest.raises(AcceldError, match="unsupported digest algorithm"):
        await convert(tmp_path / "layout", "img", tmp_path / "cache")


def test_cli_reports_a_mismatching_sha512_blob_in_one_line(tmp_path: Path) -> None:
    blob = gzip.compress(tar_bytes(), mtime=0)
    make_image(tmp_path / "layout", "bad", stored=flipped(blob))
    result = acceld(
        "convert", f"oci:{tmp_path / 'layout'}:bad", "--driver", "nydus", cache=tmp_path / "cache"
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "blob has digest sha512:" in last
    assert "Traceback" not in result.stderr
