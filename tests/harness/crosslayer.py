"""Two-layer images whose upper layer reaches through a symlink of the lower one.

The lower layer has `usr/lib/y` and a symlink `lib` to `usr/lib` (relative, absolute or escaping
the root with `..`); the upper layer writes `lib/x` (with and without a `lib/` entry), whites out
`lib/y` (or makes `lib` opaque), or hardlinks `z` to `lib/y`. Under containerd's overlay
snapshotter every layer is unpacked onto an empty directory and the layers are stacked, so the
upper layer never follows the lower symlink: an upper directory `lib` hides it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from harness.hostiletars import Case as _Case
from harness.hostiletars import _build_case, _end, _pad, header
from harness.images import init_layout

TARGETS = {"relative": b"usr/lib", "absolute": b"/usr/lib", "escaping": b"../../usr/lib"}


def _lower(target: bytes) -> Callable[[], Iterator[bytes]]:
    def layer() -> Iterator[bytes]:
        yield header(b"usr/", b"5", mode=0o755)
        yield header(b"usr/lib/", b"5", mode=0o755)
        yield header(b"usr/lib/y", size=2)
        yield _pad(b"y\n")
        yield header(b"lib", b"2", linkname=target, mode=0o777)
        yield _end()

    return layer


def _file_below() -> Iterator[bytes]:
    yield header(b"lib/x", size=2)
    yield _pad(b"x\n")
    yield _end()


def _dir_and_file_below() -> Iterator[bytes]:
    yield header(b"lib/", b"5", mode=0o750)
    yield from _file_below()


def _whiteout_below() -> Iterator[bytes]:
    yield header(b"lib/.wh.y")
    yield _end()


def _opaque_below() -> Iterator[bytes]:
    yield header(b"lib/.wh..wh..opq")
    yield _end()


def _hardlink_below() -> Iterator[bytes]:
    yield header(b"z", b"1", linkname=b"lib/y")
    yield _end()


UPPERS: dict[str, Callable[[], Iterator[bytes]]] = {
    "file": _file_below,
    "dir": _dir_and_file_below,
    "whiteout": _whiteout_below,
    "opaque": _opaque_below,
    "hardlink": _hardlink_below,
}

CASES = [f"{target}-{upper}" for target in TARGETS for upper in UPPERS]


def cross_layer_layout(layout: Path) -> Path:
    """A layout with one gzip image per case, tagged by case name."""
    init_layout(layout)
    for case in CASES:
        target, upper = case.split("-")
        _build_case(layout, case, _Case((_lower(TARGETS[target]), UPPERS[upper])))
    return layout
