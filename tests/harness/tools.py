"""Verification tools built from ../shared before the tests run (the Makefile's `test` target)."""

from __future__ import annotations

from pathlib import Path


def esgz_binary(repo_root: Path) -> Path:
    """The Go eStargz reference tool (`esgz build|verify|toc`) that `make test` builds into .cache/bin."""
    binary = repo_root / ".cache" / "bin" / "esgz"
    if not binary.exists():
        raise FileNotFoundError(
            f"{binary} is missing: build it with `make .cache/bin/esgz` (../shared/tools/esgz/build.sh)"
        )
    return binary
