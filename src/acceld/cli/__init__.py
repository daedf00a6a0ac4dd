"""The `acceld` command line: typer commands over the library, one module per area.

Importing this package is cheap on purpose: the console script imports it, and so does every
layer worker (multiprocessing runs the parent's main script again in each child it starts, as
`__mp_main__`). The commands load on first use.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["app", "convert", "images", "main", "run", "service"]
_COMMAND_MODULES = ("convert", "images", "service")
# the module that registers each top-level command
_MODULE_OF_COMMAND = {
    "convert": "convert",
    "check": "convert",
    "inspect": "images",
    "copy": "images",
    "serve": "service",
    "sync": "service",
    "prune": "service",
    "tasks": "service",
}


def _load_app(command: str | None = None) -> Any:
    """The typer app with `command`'s module loaded, or every command's when `command` is not one
    (help, a mistyped command): `acceld convert` need not import the service's configuration."""
    module = _MODULE_OF_COMMAND.get(command or "")
    for name in (module,) if module else _COMMAND_MODULES:  # each registers its commands on `app`
        importlib.import_module(f"acceld.cli.{name}")
    typer_app = importlib.import_module("acceld.cli.app").app
    # importing the submodule `acceld.cli.app` bound its name here to the module: rebind the app
    globals()["app"] = typer_app
    return typer_app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _load_app()
    if name in _COMMAND_MODULES:
        return importlib.import_module(f"acceld.cli.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _driver_argument(args: Sequence[str]) -> str:
    """The value of `-d`/`--driver` in `acceld convert`'s arguments as click reads it (the last one
    given wins), or the default."""
    driver = "estargz"
    for n, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("-d", "--driver") and n + 1 < len(args):
            driver = args[n + 1]
        elif arg.startswith("--driver="):
            driver = arg.removeprefix("--driver=")
        elif arg.startswith("-d") and not arg.startswith("--") and len(arg) > 2:
            driver = arg[2:]
    return driver


def _start_workers_early(args: Sequence[str]) -> None:
    """`acceld convert` starts the fork server of its layer workers before importing the rest of the
    CLI, so that the two start-ups overlap. A wrong guess costs nothing but that start: the
    conversion imports what its driver needs and reports bad arguments as usual."""
    if args[:1] == ["convert"] and "--help" not in args:
        from acceld.convert.forkserver import start_for_driver

        start_for_driver(_driver_argument(args[1:]))


def main() -> None:
    # acceld has no pydantic plugins: skip looking for them (a scan of every installed package)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # Importing the CLI makes a few hundred thousand objects and no garbage: the collector's passes
    # over them were ~6 % of a conversion's start-up. They are frozen (never scanned) once loaded.
    gc.disable()
    try:
        _start_workers_early(sys.argv[1:])
        app = _load_app(sys.argv[1] if len(sys.argv) > 1 else None)
    finally:
        gc.freeze()
        gc.enable()
    app()


def run() -> NoReturn:
    """The console script: `main()`, then an exit without the interpreter's teardown — freeing every
    module and object one by one (~50 ms after a conversion) that the process's end frees at once.
    Output is flushed and atexit handlers run, as in a normal exit; with threads still running, or
    an exit message to print, the exit is a normal one."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if not (code is None or isinstance(code, int)) or threading.active_count() > 1:
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # e.g. a closed pipe: reported the usual way
        raise SystemExit(code) from None
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
