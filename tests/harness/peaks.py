"""Run a command and record the peak resident memory of its whole process tree and the peak disk
use of the directories it writes to, by sampling /proc and the directories while it runs.

Every process the command starts (layer workers under a fork server included) stays in the
session the command is started in, so the tree is "every process of that session".
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
_INTERVAL = 0.02


@dataclass(frozen=True)
class Peaks:
    returncode: int
    stdout: str
    stderr: str
    rss_bytes: int  # largest sum of the resident sets of the session's processes at one sample
    disk_bytes: int  # largest total size of the files under the watched directories at one sample


def _session_pids(session: int) -> list[str]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[3]) == session:  # field 6: the session id
                pids.append(entry.name)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
    return pids


def _rss(pids: Sequence[str]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path("/proc", pid, "statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def _deleted_files(pids: Sequence[str], roots: Sequence[Path]) -> int:
    """Bytes of files under `roots` that are deleted but still open (anonymous spool files)."""
    prefixes = tuple(str(root) + "/" for root in roots)
    seen: set[tuple[int, int]] = set()
    total = 0
    for pid in pids:
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                    if not (target.startswith(prefixes) and target.endswith(" (deleted)")):
                        continue
                    st = os.stat(fd.path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _disk_use(roots: Sequence[Path]) -> int:
    total = 0
    for root in roots:
        for directory, _, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_blocks * 512
                except OSError:
                    continue
    return total


def run_with_peaks(
    command: Sequence[str], *, env: Mapping[str, str], watch: Sequence[Path] = (), timeout: float = 900
) -> Peaks:
    """Run `command` in a new session; its output and the peaks seen while it ran."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, env=dict(env), start_new_session=True
        )
        deadline = time.monotonic() + timeout
        rss = disk = 0
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command[0]} ran longer than {timeout} s")
                pids = _session_pids(process.pid)
                rss = max(rss, _rss(pids))
                disk = max(disk, _disk_use(watch) + _deleted_files(pids, watch))
                time.sleep(_INTERVAL)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
        stdout.seek(0)
        stderr.seek(0)
        return Peaks(process.returncode, stdout.read(), stderr.read(), rss, disk)


_PRINT_PEAK = """
# VmHWM, not ru_maxrss: that one keeps the peak of the forking (pytest) process across exec
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def interpreter_peak(script: str, *args: str) -> int:
    """Run Python `script` with `args` in a fresh interpreter; its peak resident memory in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", script + _PRINT_PEAK, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])
