"""Cross-process locks of one machine (`flock` on files in a lock directory).

Several conversions of one source (one per driver) each add their result to the same referrers
fallback index on registries without the referrers API; that read-modify-write must not
interleave. The lock files are a fixed set of stripes, so the directory never grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

_STRIPES = 64


@contextlib.asynccontextmanager
async def machine_lock(lock_dir: Path | None, key: str) -> AsyncIterator[None]:
    """Hold the lock for `key` among every process using `lock_dir`; no lock when it is None."""
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stripe = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % _STRIPES
    fd = os.open(lock_dir / f"{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
