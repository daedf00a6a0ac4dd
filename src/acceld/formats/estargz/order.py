"""The order of entries in the eStargz blob, as the reference `estargz.Build` chooses it.

Existing landmarks and TOC entries are dropped; a later entry whose cleaned name equals an earlier
one replaces it (keeping its own, later position); prioritised files move to the front, each
after its parent directories and, for a hardlink, after its target; then comes the landmark.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from acceld.formats.driver import FormatError
from acceld.formats.estargz.entrystore import EntryStore
from acceld.formats.estargz.tarscan import TarEntry
from acceld.formats.tarreader import TYPE_LINK

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
TOC_TAR_NAME = "stargz.index.json"
_METADATA_NAMES = (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_TAR_NAME)


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


def name_key(name: str) -> int:
    """The key `EntryStore` files an entry under: equal for names that clean to the same path."""
    return hash(clean_name(name))


class Items:
    """The blob's items in order: the store's entries by index, the landmark at index -1."""

    def __init__(self, store: EntryStore, order: array[int], landmark: Landmark) -> None:
        self._store = store
        self._order = order
        self.landmark = landmark

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, position: int) -> Item:
        index = self._order[position]
        return self.landmark if index < 0 else self._store[index]

    def __iter__(self) -> Iterator[Item]:
        for index in self._order:
            yield self.landmark if index < 0 else self._store[index]

    def is_landmark(self, position: int) -> bool:
        return self._order[position] < 0


def _live_entries(store: EntryStore) -> bytearray:
    """1 for each entry that goes into the blob: not eStargz metadata, not replaced by a later one.

    Only the entries whose key is shared (the same name, or a hash collision) are read back.
    """
    live = bytearray(b"\x01") * len(store)
    suspect_keys = {name_key(name) for name in _METADATA_NAMES}
    ordered = sorted(store.keys)
    suspect_keys.update(key for key, following in itertools.pairwise(ordered) if key == following)
    del ordered
    latest: dict[str, int] = {}
    for index, key in enumerate(store.keys):
        if key not in suspect_keys:
            continue
        name = clean_name(store[index].name)
        if name in _METADATA_NAMES:
            live[index] = 0
            continue
        replaced = latest.get(name)
        if replaced is not None:
            live[replaced] = 0
        latest[name] = index
    return live


class _NameIndex:
    """The live entry of a cleaned name, for the few names that prefetching looks up."""

    def __init__(self, store: EntryStore, live: bytearray) -> None:
        self.store = store
        self._live = live
        self._found: dict[str, int | None] = {}

    def prepare(self, names: set[str]) -> None:
        """Look up all of `names` in one pass over the keys."""
        keys = {hash(name) for name in names}
        for name in names:
            self._found.setdefault(name, None)
        for index, key in enumerate(self.store.keys):
            if key in keys and self._live[index]:
                name = clean_name(self.store[index].name)
                if name in names:
                    self._found[name] = index

    def get(self, name: str) -> int | None:
        if name not in self._found:
            self.prepare({name})
        return self._found[name]


def _with_parents(path: str) -> set[str]:
    names = {""}
    key = clean_name(path)
    while key:
        names.add(key)
        key = key.rpartition("/")[0]
    return names


def arrange(store: EntryStore, prioritized: Sequence[str]) -> tuple[Items, list[str]]:
    """The blob's entry order and the prioritised paths that are not in the layer."""
    live = _live_entries(store)
    moved: dict[int, None] = {}  # the prioritised entries in order (a dict as an ordered set)
    missed: list[str] = []
    if prioritized:
        index = _NameIndex(store, live)
        index.prepare(set().union(*map(_with_parents, prioritized)))
        for path in prioritized:
            try:
                found = _move(path, index, moved, set())
            except RecursionError:
                raise FormatError(f"prefetch file {path!r}: path or hardlink chain too deep") from None
            if not found:
                missed.append(path)
    landmark = Landmark(PREFETCH_LANDMARK if prioritized else NO_PREFETCH_LANDMARK)
    order = array("q", moved)
    order.append(-1)
    order.extend(index for index, flag in enumerate(live) if flag and index not in moved)
    return Items(store, order, landmark), missed


def _move(name: str, index: _NameIndex, moved: dict[int, None], links_followed: set[str]) -> bool:
    """Move `name` with its parents (and hardlink target) first; False when it is not there.

    Parents moved before a missing ancestor is found stay moved, as in the reference (which
    recurses forever on a hardlink loop; that is an error here).
    """
    key = clean_name(name)
    found = index.get(key)
    if key == "":
        if found is not None:
            moved.setdefault(found)
        return True
    if found is None:
        return False
    if not _move(key.rpartition("/")[0], index, moved, links_followed):
        return False
    if found not in moved:
        entry = index.store[found]
        if entry.typeflag == TYPE_LINK:
            if key in links_followed:
                raise FormatError(f"hardlink loop through {entry.name!r}")
            links_followed.add(key)
            if not _move(entry.linkname, index, moved, links_followed):
                return False
        moved.setdefault(found)
    return True
