"""The fork server every worker process of a conversion comes from.

Its interpreter start-up and imports take as long as the CLI's own, so `acceld convert` starts it
before importing the rest of the CLI: the two then overlap instead of delaying the first layer.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing import forkserver

from acceld.convert.drivers import DRIVER_CLASSES, worker_modules

CONTEXT = multiprocessing.get_context("forkserver")
# What every child needs before its job, imported once by the fork server instead of by each child:
# the main script (multiprocessing runs it again in a child whose fork server has not), the module
# of a child's entry and the layer job; and the fork server's own quick exit.
_PRELOAD = (
    "__main__",
    "acceld.convert.worker_child",
    "acceld.convert.layer_job",
    "acceld.convert.forkserver_exit",
)
CONTEXT.set_forkserver_preload(
    [*_PRELOAD, *(module for name in DRIVER_CLASSES for module in worker_modules(name))]
)


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the fork server now (if it is not running yet) importing `preload` beyond the basics,
    instead of every driver's modules."""
    CONTEXT.set_forkserver_preload([*_PRELOAD, *preload])
    forkserver.ensure_running()


def start_for_driver(name: str) -> None:
    """The fork server for a conversion with driver `name`; nothing for an unknown name (the
    conversion reports it)."""
    if name in DRIVER_CLASSES:
        start_fork_server(worker_modules(name))
