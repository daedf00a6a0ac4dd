"""Verification tools built from ../shared on demand (.ci/run builds them up front)."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path


def esgz_binary(repo_root: Path) -> Path:
    """The Go eStargz reference tool (`esgz build|verify|toc`), built into .cache/bin once."""
    binary = repo_root / ".cache" / "bin" / "esgz"
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / ".esgz.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            build = repo_root.parent / "shared" / "tools" / "esgz" / "build.sh"
            result = subprocess.run([str(build), str(binary)], capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                raise RuntimeError(f"building esgz with {build} failed:\n{result.stderr}")
    return binary
