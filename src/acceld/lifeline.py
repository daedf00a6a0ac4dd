"""Child processes that do not outlive the process they work for.

Two independent mechanisms, because either alone has a gap: the kernel's parent-death signal
(Linux `PR_SET_PDEATHSIG`, tied to the thread that forked) and a pipe whose other end only the
employer holds — when the employer dies, however it dies, the pipe reports a hang-up.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
EXIT_EMPLOYER_GONE = 70


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent exits (Linux; elsewhere a no-op). With `parent`, the pid
    the parent had: a parent that already died before this call is noticed too."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here (e.g. a seccomp filter): the pipe watch still applies
    if parent is not None and os.getppid() != parent:
        os._exit(EXIT_EMPLOYER_GONE)


def exit_when_hung_up(fd: int, *, whole_group: bool = False) -> None:
    """Exit as soon as `fd` (a pipe end whose other end the employer holds) reports a hang-up.
    With `whole_group` and when this process leads its process group, every process of the group
    (helpers it started) is killed along with it."""

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # POLLHUP and POLLERR are always reported; data is not waited for
        while True:
            try:
                if poller.poll():
                    break
            except InterruptedError:
                continue
        if whole_group and os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(EXIT_EMPLOYER_GONE)

    threading.Thread(target=watch, name="acceld-lifeline", daemon=True).start()
