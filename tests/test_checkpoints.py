"""The shared deflate checkpoint module, checked with Python's zlib (tests/harness/deflate_resume)."""

from __future__ import annotations

import gzip
import io
import itertools
import random
import zlib
from pathlib import Path

import pytest
from harness.deflate_resume import resume

from acceld.formats.checkpoints import WINDOW_SIZE, CheckpointingReader, WindowStore, every, inflate_from
from acceld.formats.driver import FormatError


def _content(seed: int, size: int) -> bytes:
    """Text-like runs mixed with incompressible runs, so stored blocks occur too."""
    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < size:
        if rng.random() < 0.3:
            parts.append(rng.randbytes(rng.randrange(1000, 200_000)))
        else:
            words = [rng.choice(("alpha", "beta", "gamma", "delta", "\n", "0123")) for _ in range(20_000)]
            parts.append(" ".join(words).encode())
    return b"".join(parts)[:size]


def _multi_member(seed: int) -> tuple[bytes, bytes]:
    pieces = [_content(seed + n, size) for n, size in enumerate((3_000_000, 0, 1_500_000, 700_000))]
    blob = b"".join(gzip.compress(piece, level) for piece, level in zip(pieces, (6, 1, 9, 6), strict=True))
    return blob, b"".join(pieces)


def _build(
    blob: bytes, spacing: int, tmp_path: Path
) -> tuple[CheckpointingReader, WindowStore, bytes, bytes]:
    windows = WindowStore(tmp_path)
    seen = bytearray()
    reader = CheckpointingReader(io.BytesIO(blob), every(spacing), windows, on_input=seen.extend)
    out = bytearray()
    buffer = bytearray(100_000)
    while n := reader.readinto(buffer):
        out += buffer[:n]
    return reader, windows, bytes(out), bytes(seen)


def _check_all(blob: bytes, content: bytes, spacing: int, tmp_path: Path) -> set[int]:
    reader, windows, out, seen = _build(blob, spacing, tmp_path)
    assert out == content
    assert seen == blob  # every compressed byte passed through on_input once, in order
    assert reader.uncompressed_size == len(content)
    points = reader.checkpoints
    assert points[0].uncompressed_offset == 0 and points[0].bits == 0 and points[0].member_start
    for before, after in itertools.pairwise(points):
        assert after.uncompressed_offset - before.uncompressed_offset > spacing
        assert after.compressed_offset > before.compressed_offset
    for n, point in enumerate(points):
        end = points[n + 1].compressed_offset if n + 1 < len(points) else len(blob)
        stop = points[n + 1].uncompressed_offset if n + 1 < len(points) else len(content)
        window = windows.get(n)
        expected_window = (b"\0" * WINDOW_SIZE + content[: point.uncompressed_offset])[-WINDOW_SIZE:]
        assert window == expected_window
        if point.bits:
            assert point.previous_byte == blob[point.compressed_offset - 1]
        span = blob[point.span_start : end]
        want = content[point.uncompressed_offset : stop]
        assert resume(span, point.bits, window, len(want)) == want  # independent decoder
        assert inflate_from(span, point.bits, window, len(want)) == want
    return {point.bits for point in points}


def test_single_member_every_bit_offset(tmp_path: Path) -> None:
    content = _content(1, 12_000_000)
    blob = gzip.compress(content, 6)
    bits = _check_all(blob, content, 256 << 10, tmp_path)
    assert bits - {0}, "no checkpoint with pending bits: the test would not exercise priming"


def test_multi_member_and_zero_padding(tmp_path: Path) -> None:
    blob, content = _multi_member(7)
    _check_all(blob, content, 200_000, tmp_path)
    _check_all(blob + b"\0" * 1000, content, 1 << 20, tmp_path)


def test_resume_crosses_member_ends() -> None:
    blob, content = _multi_member(3)
    first_header = 10
    window = b"\0" * WINDOW_SIZE
    assert inflate_from(blob[first_header:], 0, window) == content
    assert resume(blob[first_header:], 0, window, len(content)) == content


def test_no_read_ahead_and_policy_sees_window(tmp_path: Path) -> None:
    content = _content(5, 2_000_000)
    blob = gzip.compress(content)
    seen: list[tuple[int, int]] = []

    def policy(boundary, reader):  # type: ignore[no-untyped-def]
        before = content[: boundary.uncompressed_offset]
        assert reader.window() == (b"\0" * WINDOW_SIZE + before)[-WINDOW_SIZE:]
        seen.append((boundary.uncompressed_offset, position))
        return False

    with WindowStore(tmp_path) as windows:
        reader = CheckpointingReader(io.BytesIO(blob), policy, windows)
        position = 0
        while chunk := reader.read(7_777):
            position += len(chunk)
            assert all(offset <= position for offset, _ in seen)
        assert not reader.checkpoints and windows.count == 0
    assert len(seen) > 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda blob: blob[: len(blob) // 2], "truncated"),
        (lambda blob: blob + b"junk", "trailing garbage"),
        (lambda blob: blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:], "incorrect data check"),
        (lambda blob: b"", "truncated"),
        (lambda blob: b"PK\3\4" + blob, "incorrect header check"),
    ],
)
def test_malformed_gzip_is_a_format_error(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    blob = damage(gzip.compress(_content(9, 300_000)))
    with WindowStore(tmp_path) as windows, pytest.raises(FormatError, match=message):
        CheckpointingReader(io.BytesIO(blob), every(1 << 20), windows).finish()


def test_zlib_stream_is_not_gzip(tmp_path: Path) -> None:
    with WindowStore(tmp_path) as windows, pytest.raises(FormatError):
        CheckpointingReader(io.BytesIO(zlib.compress(b"x" * 1000)), every(1), windows).finish()


@pytest.mark.slow
def test_rootfs_layer(rootfs_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image, tars = rootfs_image
    blobs = image.layout / "blobs" / "sha256"
    layer = max(blobs.iterdir(), key=lambda path: path.stat().st_size)
    blob = layer.read_bytes()
    content = tars["rootfs-lower"].read_bytes()
    assert gzip.decompress(blob) == content
    _check_all(blob, content, 4 << 20, tmp_path)
