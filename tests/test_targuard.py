"""TarGuard handed its headers by a HeaderReader (`take_headers`) decides as the guard that parses
the bytes itself: the same error, at the same entry, for hostile, odd and malformed tars."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from harness.hostiletars import header, pax
from harness.oddtars import CASES as ODD_CASES

from acceld.formats.driver import FormatError
from acceld.formats.limits import DEFAULT_LIMITS, Limits
from acceld.formats.targuard import TarGuard
from acceld.formats.tarreader import HeaderReader

END = bytes(1024)
SMALL = replace(DEFAULT_LIMITS, max_layer_entries=5, max_header_bytes=600, max_sparse_bytes=4096)


def _sparse_gnu(realsize: int) -> bytes:
    def fill(block: bytearray) -> None:
        block[386:398] = b"%011o\0" % 0
        block[398:410] = b"%011o\0" % 512
        block[483:495] = b"%011o\0" % realsize

    return header(b"sparse", b"S", 512, gnu=True, extra=fill) + b"x" * 512


def _global(local: bytes) -> bytes:
    """A PAX global header with the records of the local one `local`."""
    return header(b"GlobalHead", b"g", int(local[124:135], 8)) + local[512:]


CRAFTED: dict[str, bytes] = {
    "benign": header(b"etc/", b"5") + header(b"etc/a", size=3) + b"abc".ljust(512, b"\0") + END,
    "dotdot": header(b"etc/", b"5") + header(b"etc/../../x") + END,
    "nul_in_pax_path": pax({b"path": b"a\0b"}) + header(b"placeholder") + END,
    "nul_in_pax_linkpath": pax({b"linkpath": b"a\0b"}) + header(b"l", b"2") + END,
    "below_symlink": header(b"lib", b"2", linkname=b"/tmp") + header(b"lib/x") + END,
    "below_symlink_replaced": header(b"lib", b"2", linkname=b"/tmp")
    + header(b"lib", b"5")
    + header(b"lib/x")
    + END,
    "below_symlink_whiteout": header(b"lib", b"2", linkname=b"/tmp")
    + header(b".wh.lib")
    + header(b"lib/x")
    + END,
    # a symlink replaces a directory whose files were checked just before: the next one is below it
    "below_symlink_after_siblings": header(b"other", b"2", linkname=b"/tmp")
    + header(b"lib/sub/a")
    + header(b"lib/sub/b")
    + header(b"lib", b"2", linkname=b"/tmp")
    + header(b"lib/sub/c")
    + END,
    "hardlink_dotdot": header(b"f") + header(b"l", b"1", linkname=b"../../f") + END,
    "hardlink_missing": header(b"l", b"1", linkname=b"nothing") + END,
    "hardlink_to_directory": header(b"d/", b"5") + header(b"l", b"1", linkname=b"d") + END,
    "hardlink_to_old_dir": header(b"d/", b"\0") + header(b"l", b"1", linkname=b"d") + END,
    "hardlink_ok": header(b"f", size=1) + b"x".ljust(512, b"\0") + header(b"l", b"1", linkname=b"./f") + END,
    "too_many_entries": b"".join(header(b"f%d" % n) for n in range(6)) + END,
    "pax_too_big": pax({b"comment": b"c" * 700}) + header(b"f") + END,
    "long_name_too_big": header(b"././@LongLink", b"L", 700, gnu=True) + b"n" * 1024 + header(b"f") + END,
    "long_name": header(b"././@LongLink", b"L", 8, gnu=True)
    + b"../evil\0".ljust(512, b"\0")
    + header(b"f", gnu=True)
    + END,
    "long_link": header(b"f")
    + header(b"././@LongLink", b"K", 6, gnu=True)
    + b"../f\0\0".ljust(512, b"\0")
    + header(b"l", b"1", gnu=True)
    + END,
    "pax_path_overrides_dotdot": pax({b"path": b"fine"}) + header(b"../bad") + END,
    "pax_path_dotdot": pax({b"path": b"a/../../b"}) + header(b"fine") + END,
    "two_pax_headers": pax({b"path": b"a/../../b"}) + pax({b"path": b"ok"}) + header(b"fine") + END,
    "pax_global": _global(pax({b"path": b"../x"})) + header(b"fine") + END,
    "pax_size_not_a_number": pax({b"size": b"12x"}) + header(b"../bad") + END,
    "sparse_gnu_too_big": _sparse_gnu(8192) + END,
    "sparse_gnu_ok": _sparse_gnu(2048) + END,
    "sparse_pax_too_big": pax(
        {b"GNU.sparse.size": b"9000", b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"}
    )
    + header(b"s", size=512)
    + b"0\n".ljust(512, b"\0")
    + END,
    "bad_checksum": header(b"a") + header(b"../b")[:148] + b"0000000\0" + header(b"../b")[156:] + END,
    "truncated": header(b"a", size=100) + b"x" * 10,
    "zero_then_data": header(b"a") + bytes(512) + header(b"../b") + END,
    "no_end_marker": header(b"a") + header(b"b/../../c"),
    "extension_without_entry": pax({b"path": b"a"}),
}


def _outcome(run: Callable[[], object]) -> str:
    try:
        run()
    except (FormatError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


class _Source:
    """The tar as a reader sees it, every byte it reads fed to `guard` first (as SourceTarStream does)."""

    def __init__(self, data: bytes, guard: TarGuard | None) -> None:
        self._stream = io.BytesIO(data)
        self._guard = guard
        self.position = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        if self._guard is not None and data:
            self._guard.feed(data)
        self.position += len(data)
        return data


def _read_all(reader: HeaderReader) -> None:
    while reader.next() is not None:
        pass


def _parsing_guard(data: bytes, limits: Limits) -> tuple[str, int]:
    """The guard ahead of the reader, parsing the bytes itself (a driver that reads no headers)."""
    guard = TarGuard(limits)

    def run() -> None:
        for at in range(0, len(data), 4096):
            guard.feed(data[at : at + 4096])
        _read_all(HeaderReader(_Source(data, None), sparse=True, strict_globals=False))

    return _outcome(run), guard.entries


def _handed_guard(data: bytes, limits: Limits) -> tuple[str, int]:
    guard = TarGuard(limits)

    def run() -> None:
        _read_all(HeaderReader(_Source(data, guard), sparse=True, strict_globals=False, guard=guard))
        guard.check_complete()

    return _outcome(run), guard.entries


# what some of them must end with under SMALL (the rest: the same outcome is what matters)
EXPECTED = {
    "benign": "ok",
    "dotdot": "PathError: tar entry 'etc/../../x' has a '..' component",
    "nul_in_pax_path": "PathError: PAX path 'a\\x00b' contains a NUL byte",
    "below_symlink": "PathError: tar entry 'lib/x' lies below the symlink 'lib'",
    "below_symlink_whiteout": "ok",
    "below_symlink_after_siblings": "PathError: tar entry 'lib/sub/c' lies below the symlink 'lib'",
    "hardlink_missing": "PathError: hardlink 'l' points to 'nothing', which is not a file",
    "hardlink_to_old_dir": "ok",
    "too_many_entries": "LimitExceeded: ",
    "pax_too_big": "LimitExceeded: ",
    "long_name": "PathError: tar entry '../evil' has a '..' component",
    "sparse_gnu_too_big": "LimitExceeded: ",
    "sparse_pax_too_big": "LimitExceeded: ",
    "pax_global": "ok",
    "no_end_marker": "PathError: tar entry 'b/../../c'",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_handed_headers_decide_as_parsed_bytes(case: str) -> None:
    data = CRAFTED[case]
    for limits in (SMALL, DEFAULT_LIMITS):
        outcome = _handed_guard(data, limits)
        assert outcome == _parsing_guard(data, limits)
        if limits is SMALL:
            assert outcome[0].startswith(EXPECTED.get(case, "")), outcome


@pytest.fixture(scope="module")
def odd_tars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    tars = {}
    for name, case in ODD_CASES.items():
        workdir = tmp_path_factory.mktemp(name)
        tars[name] = case(workdir)
    return tars


def test_handed_headers_decide_as_parsed_bytes_on_odd_tars(odd_tars: dict[str, list[Path]]) -> None:
    for name, paths in odd_tars.items():
        for path in paths:
            data = path.read_bytes()
            for limits in (SMALL, DEFAULT_LIMITS):
                assert _handed_guard(data, limits) == _parsing_guard(data, limits), (name, path.name)


def test_only_a_guard_that_has_seen_no_byte_hands_over() -> None:
    guard = TarGuard(DEFAULT_LIMITS)
    block = header(b"../x")
    guard.feed(block[:100])
    assert not guard.take_headers()
    with pytest.raises(FormatError, match=r"'\.\.' component"):
        guard.feed(block[100:])  # it still parses the bytes itself
    fresh = TarGuard(DEFAULT_LIMITS)
    assert fresh.take_headers()
    fresh.feed(header(b"../x"))  # only counted: the reader that takes the headers checks them
    assert fresh.take_headers()


def test_a_reader_stopping_early_is_caught() -> None:
    data = header(b"a") + header(b"b/../../c") + END
    guard = TarGuard(DEFAULT_LIMITS)
    reader = HeaderReader(_Source(data, guard), sparse=True, strict_globals=False, guard=guard)
    assert reader.next() is not None
    with pytest.raises(RuntimeError, match="stopped before the end"):
        guard.check_complete()
