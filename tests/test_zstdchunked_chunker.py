"""The vectorised chunker against a byte-at-a-time model of containers/storage's chunking.

The model follows the Go state machines in pkg/chunked/compressor (holesFinder,
rollingChecksumReader, RollSum) literally: uint32 arithmetic, one byte rolled at a time.
"""

from __future__ import annotations

import random

import pytest

from acceld.formats.zstdchunked.chunker import (
    Chunker,
    Data,
    Zeros,
    is_one_chunk,
    split_points,
    split_points_each,
)


def _go_model(content: bytes) -> list[tuple[str, int]]:
    s1, s2 = 64 * 31, 64 * 63 * 31
    window = [0] * 64
    wofs = 0

    def roll(ch: int) -> bool:
        nonlocal s1, s2, wofs
        drop = window[wofs]
        s1 = (s1 + ch - drop) & 0xFFFFFFFF
        s2 = (s2 + s1 - 64 * (drop + 31)) & 0xFFFFFFFF
        window[wofs] = ch
        wofs = (wofs + 1) & 63
        return s2 & 0xFFFF == 0xFFFF

    chunks: list[tuple[str, int]] = []
    current = 0
    i = 0
    while i < len(content):
        j = i
        while j < len(content) and content[j] == 0:
            j += 1
        if j - i >= 1024:  # a hole: rolled as zeros, never split inside, a chunk of its own
            if current:
                chunks.append(("data", current))
                current = 0
            for _ in range(j - i):
                roll(0)
            chunks.append(("zeros", j - i))
            i = j
            continue
        end = max(j, i + 1)
        for k in range(i, end):
            current += 1
            if roll(content[k]):
                chunks.append(("data", current))
                current = 0
        i = end
    if current:
        chunks.append(("data", current))
    return chunks


def _chunker(content: bytes, block: int) -> list[tuple[str, int]]:
    chunker = Chunker()
    chunks: list[tuple[str, int]] = []
    current = 0

    def handle(piece: Data | Zeros) -> None:
        nonlocal current
        if isinstance(piece, Zeros):
            if current:
                chunks.append(("data", current))
                current = 0
            chunks.append(("zeros", piece.size))
            return
        current += len(piece.data)
        if piece.cut and current:
            chunks.append(("data", current))
            current = 0

    for start in range(0, len(content), block):
        history = content[max(0, start - 64) : start].rjust(64, b"\0")
        data = content[start : start + block]
        for piece in chunker.feed(data, split_points(history, data)):
            handle(piece)
    for piece in chunker.finish():
        handle(piece)
    assert current == 0, "finish() must end the last chunk"
    return chunks


def _content(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.random()
        if kind < 0.35:
            parts.append(bytes(rng.choice([1, 63, 64, 65, 1023, 1024, 1025, 4096, 70000])))
        elif kind < 0.5:
            parts.append(bytes(rng.randint(0, 2) for _ in range(rng.randint(1, 3000))))
        else:
            parts.append(rng.randbytes(rng.randint(1, 150_000)))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(6))
def test_chunks_match_the_go_model_for_any_block_size(seed: int) -> None:
    rng = random.Random(seed)
    content = _content(rng)
    expected = _go_model(content)
    assert sum(size for _, size in expected) == len(content)
    for block in (1000, 4096, 65536, 1 << 20):
        assert _chunker(content, block) == expected, f"block size {block}"


def test_random_data_averages_about_64_kib_chunks() -> None:
    content = random.Random(7).randbytes(4 << 20)
    chunks = _chunker(content, 1 << 20)
    assert all(kind == "data" for kind, _ in chunks)
    assert 16 <= len(chunks) <= 200  # 4 MiB / 64 KiB = 64 on average


def test_zero_runs_become_zeros_chunks_only_from_1024_bytes() -> None:
    content = b"a" * 10 + bytes(1023) + b"b" + bytes(1024) + b"c" + bytes(5000)
    chunks = _chunker(content, 700)
    assert ("zeros", 1024) in chunks and chunks[-1] == ("zeros", 5000)
    assert ("zeros", 1023) not in chunks
    assert chunks == _go_model(content)


def test_split_points_need_the_previous_window() -> None:
    rng = random.Random(3)
    data = rng.randbytes(300_000)
    whole = split_points(bytes(64), data).tolist()
    cut = 123_457
    tail = split_points(data[cut - 64 : cut], data[cut:]).tolist()
    assert [i for i in whole if i >= cut] == [i + cut for i in tail]


def test_one_chunk_shortcut_agrees_with_the_go_model() -> None:
    """`is_one_chunk` (the writer's shortcut for small files) says yes exactly when the model gives
    one data chunk: no split before the last byte, no zero run of 1024 bytes."""
    rng = random.Random(11)
    contents = [
        b"x",
        bytes(1023),
        bytes(1024),
        b"a" + bytes(1024) + b"b",
        b"a" * 5000 + bytes(1023),
        *(rng.randbytes(rng.randint(1, 200_000)) for _ in range(40)),
        *(_content(rng) for _ in range(20)),
    ]
    # content whose only split point is its last byte is still one chunk
    data = rng.randbytes(300_000)
    first = int(split_points(bytes(64), data)[0])
    contents.append(data[: first + 1])
    seen = set()
    for content in contents:
        expected = _go_model(content)
        one = is_one_chunk(content, split_points(bytes(64), content))
        assert one == (len(expected) == 1 and expected[0][0] == "data"), len(content)
        seen.add(one)
    assert seen == {True, False}


def test_split_points_of_many_files_in_one_pass_equal_each_files_own() -> None:
    rng = random.Random(5)
    contents = [b"", *(_content(rng)[: rng.randint(1, 80_000)] for _ in range(60)), bytes(3000), b"x"]
    together = split_points_each(contents)
    assert len(together) == len(contents)
    for content, points in zip(contents, together, strict=True):
        assert points.tolist() == split_points(bytes(64), content).tolist()
    assert sum(len(points) for points in together) > 0
