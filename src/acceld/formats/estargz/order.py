"""The order of entries in the eStargz blob, as the reference `estargz.Build` chooses it.

Existing landmarks and TOC entries are dropped; a later entry whose cleaned name equals an earlier
one replaces it (keeping its own, later position); prioritised files move to the front, each
after its parent directories and, for a hardlink, after its target; then comes the landmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from acceld.formats.driver import FormatError
from acceld.formats.estargz.tarscan import TYPE_LINK, TarEntry

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
TOC_TAR_NAME = "stargz.index.json"


@dataclass(frozen=True, slots=True)
class Landmark:
    """The 1-byte marker file placed after the prioritised files."""

    name: str


Item = TarEntry | Landmark


def clean_name(name: str) -> str:
    """Go's `path.Clean("/" + name)` without the leading slash: `./a//b/` → `a/b`."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


class _Entries:
    """Entries in order with lookup by cleaned name (one live entry per name)."""

    def __init__(self) -> None:
        self.by_name: dict[str, TarEntry] = {}
        self.ordered: list[TarEntry | None] = []
        self._slot: dict[str, int] = {}

    def add(self, entry: TarEntry) -> None:
        key = clean_name(entry.name)
        self.remove(key)
        self.by_name[key] = entry
        self._slot[key] = len(self.ordered)
        self.ordered.append(entry)

    def remove(self, key: str) -> None:
        if key in self.by_name:
            del self.by_name[key]
            self.ordered[self._slot.pop(key)] = None

    def live(self) -> list[TarEntry]:
        return [entry for entry in self.ordered if entry is not None]


def arrange(entries: Sequence[TarEntry], prioritized: Sequence[str]) -> tuple[list[Item], list[str]]:
    """The blob's entry order and the prioritised paths that are not in the layer."""
    remaining = _Entries()
    for entry in entries:
        if clean_name(entry.name) not in (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_TAR_NAME):
            remaining.add(entry)
    moved = _Entries()
    missed: list[str] = []
    for path in prioritized:
        try:
            found = _move(path, remaining, moved, set())
        except RecursionError:
            raise FormatError(f"prefetch file {path!r}: path or hardlink chain too deep") from None
        if not found:
            missed.append(path)
    landmark = Landmark(PREFETCH_LANDMARK if prioritized else NO_PREFETCH_LANDMARK)
    return [*moved.live(), landmark, *remaining.live()], missed


def _move(name: str, source: _Entries, target: _Entries, links_followed: set[str]) -> bool:
    """Move `name` with its parents (and hardlink target) first; False when it is not there.

    Parents moved before a missing ancestor is found stay moved, as in the reference (which
    recurses forever on a hardlink loop; that is an error here).
    """
    key = clean_name(name)
    if key == "":
        root = source.by_name.get("")
        if root is not None:
            source.remove("")
            target.add(root)
        return True
    if key not in source.by_name and key not in target.by_name:
        return False
    parent = key.rpartition("/")[0]
    if not _move(parent, source, target, links_followed):
        return False
    entry = source.by_name.get(key)
    if entry is not None and entry.typeflag == TYPE_LINK:
        if key in links_followed:
            raise FormatError(f"hardlink loop through {entry.name!r}")
        links_followed.add(key)
        if not _move(entry.linkname, source, target, links_followed):
            return False
    entry = source.by_name.get(key)
    if entry is not None:
        source.remove(key)
        target.add(entry)
    return True
