"""Worker processes of the pipeline: results, errors, killed workers, cancellation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from acceld.convert import forkserver
from acceld.convert.errors import ConvertError
from acceld.convert.slots import LargestFirst
from acceld.convert.workers import ProcessRunner
from acceld.formats.driver import FormatError


def square(value: int) -> int:
    return value * value


def with_progress(total: int, report: Callable[[int], None]) -> int:
    for _ in range(total):
        report(10)
    return os.getpid()


def bad_input() -> None:
    raise FormatError("bad tar: truncated header")


def bug() -> None:
    raise KeyError("oops")


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exits(status: int) -> None:
    os._exit(status)


def sleep_forever(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(600)


async def test_results_and_progress_come_back() -> None:
    runner = ProcessRunner(2)
    assert await asyncio.gather(*(runner.run(square, n) for n in range(5))) == [0, 1, 4, 9, 16]
    reports: list[int] = []
    child = await runner.run(with_progress, 3, on_progress=reports.append)
    assert reports == [10, 10, 10] and child != os.getpid()


async def test_errors_cross_the_process_boundary() -> None:
    runner = ProcessRunner(1)
    with pytest.raises(FormatError, match="bad tar: truncated header"):
        await runner.run(bad_input)
    with pytest.raises(ConvertError, match="worker failed: KeyError") as failure:
        await runner.run(bug)
    assert not failure.value.transient
    oom = r"worker process was killed by signal SIGKILL \(out of memory\?\)"
    with pytest.raises(ConvertError, match=oom) as died:
        await runner.run(killed)
    assert died.value.transient
    with pytest.raises(ConvertError, match="worker process exited with status 3 without a result") as ended:
        await runner.run(exits, 3)
    assert not ended.value.transient


async def test_cancelling_terminates_the_worker(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.ensure_future(ProcessRunner(1).run(sleep_forever, pid_file))
    while not pid_file.exists() or not pid_file.read_text():
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped


def record(path: Path, label: str) -> None:
    with path.open("a") as log:
        log.write(label + "\n")


async def test_the_largest_waiting_job_starts_first(tmp_path: Path) -> None:
    """A large layer started behind small ones would end the conversion late with workers idle."""
    log = tmp_path / "started"
    runner = ProcessRunner(limit=1)
    sizes = {"small": 1, "large": 100, "middle": 10, "also-small": 1}
    await asyncio.gather(*(runner.run(record, log, label, size=size) for label, size in sizes.items()))
    assert log.read_text().split() == ["large", "middle", "small", "also-small"]


async def test_a_cancelled_waiter_gives_up_its_place_and_no_slot() -> None:
    slots = LargestFirst(1)
    entered: list[str] = []
    release = asyncio.Event()

    async def job(label: str, size: int) -> None:
        async with slots.hold(size):
            entered.append(label)
            await release.wait()

    first = asyncio.create_task(job("first", 1))
    await asyncio.sleep(0.01)
    cancelled = asyncio.create_task(job("cancelled", 50))
    last = asyncio.create_task(job("last", 5))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, last)
    assert entered == ["first", "last"] and cancelled.cancelled()
    async with slots.hold(0):  # every slot came back
        pass


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


async def test_a_job_started_beside_a_larger_one_runs_at_a_lower_priority() -> None:
    """The largest layer decides when a conversion ends: smaller ones beside it leave it the CPU."""
    runner = ProcessRunner(limit=2)
    base = niceness()
    large, small = await asyncio.gather(runner.run(niceness, size=100), runner.run(niceness, size=1))
    assert large == base and small == min(19, base + 10)
    assert await runner.run(niceness, size=1) == base  # alone


def test_the_fork_server_imports_no_asyncio() -> None:
    """A worker process needs only its entry and the layer job: asyncio (~20 ms of the fork server's
    start-up, which the first layer waits for) stays the conversion's."""
    script = (
        "import importlib, sys\n"
        "from acceld.convert import forkserver\n"
        "from acceld.convert.drivers import DRIVER_CLASSES, worker_modules\n"
        "for name in DRIVER_CLASSES:\n"
        "    for module in [*forkserver._PRELOAD[1:], *worker_modules(name)]:\n"
        "        importlib.import_module(module)\n"
        "print('asyncio' in sys.modules)\n"
    )
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == "False", printed


_FORK_SERVER_SCRIPT = """
import atexit
import multiprocessing
import sys

if __name__ == "__main__":
    atexit.register(print, "the script's exit ran its atexit handlers")
    import acceld.convert.forkserver_exit  # outside a fork server: no effect
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sys.argv[1:])
    worker = context.Process(target=print, args=("worker ran",))
    worker.start()
    worker.join()
"""


@pytest.mark.parametrize("fast_exit", [True, False])
def test_the_fork_server_ends_without_the_interpreter_teardown(tmp_path: Path, fast_exit: bool) -> None:
    """The conversion's process tree ends with its CLI, not 10-30 ms later when the fork server has
    freed its modules one by one: the fork server preloads a module whose exit hook skips that (and
    the fork server's other atexit handlers), and that does nothing in any other process."""
    assert "acceld.convert.forkserver_exit" in forkserver._PRELOAD
    (tmp_path / "probe.py").write_text(
        'import atexit\natexit.register(print, "the fork server\'s exit ran its atexit handlers")\n'
    )
    preload = ["probe", *(["acceld.convert.forkserver_exit"] if fast_exit else [])]
    # the output pipe ends when every process holding it has: the script, its fork server, its worker
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SERVER_SCRIPT, *preload],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = ["worker ran", "the script's exit ran its atexit handlers"]
    if not fast_exit:
        lines.append("the fork server's exit ran its atexit handlers")
    assert sorted(result.stdout.splitlines()) == sorted(lines)
