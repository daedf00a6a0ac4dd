"""Preloaded by the fork server: in that process, an exit without the interpreter's teardown.

The fork server lives as long as the conversion and, when that ended, took 10-30 ms more to free
its modules and objects one by one: the conversion's process tree (what a caller waiting for all
of it sees) ended that much later. Its forked workers already end with `os._exit`. Imported by any
other process, this module does nothing: an exit status of 0 there could hide a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

# how multiprocessing starts a fork server: `python -c "from multiprocessing.forkserver import main; ..."`
_FORK_SERVER_COMMAND = "from multiprocessing.forkserver import main;"


def _exit_now() -> None:
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing left to say
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if any(argument.startswith(_FORK_SERVER_COMMAND) for argument in sys.orig_argv):
    atexit.register(_exit_now)
