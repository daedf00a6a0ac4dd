"""What a worker process runs: one call, its progress reports and its outcome sent up a pipe.

Kept apart from `workers` (the asyncio side) so the fork server imports only this, not asyncio.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from acceld.convert.errors import ConvertError
from acceld.errors import AcceldError
from acceld.lifeline import die_with_parent, exit_when_hung_up

# Messages from a child: any number of progress reports, then one result or error; none at all
# when it died first.
PROGRESS, RESULT, ERROR = "progress", "result", "error"


def run_child(
    conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], reports: bool, niceness: int
) -> None:
    # Gone as soon as the conversion's end of the pipe closes, however the conversion died (the fork
    # server outlives it while a worker lives: workers hold its liveness pipe); killed with the fork
    # server should that die first.
    die_with_parent()
    exit_when_hung_up(conn.fileno())
    if niceness:
        os.nice(niceness)

    def report(amount: int) -> None:
        conn.send((PROGRESS, amount))

    try:
        result: tuple[str, Any] = (RESULT, fn(*args, report) if reports else fn(*args))
    except AcceldError as exc:
        result = (ERROR, exc)
    except BaseException as exc:
        result = (ERROR, ConvertError(f"worker failed: {type(exc).__name__}: {exc}"))
    conn.send(result)
    conn.close()
