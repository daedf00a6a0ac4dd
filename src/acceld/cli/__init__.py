"""The `acceld` command line: typer commands over the library, one module per area.

Importing this package is cheap on purpose: the console script imports it, and so does every
layer worker (multiprocessing runs the parent's main script again in each child it starts, as
`__mp_main__`). The commands load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app", "convert", "images", "main", "service"]
_COMMAND_MODULES = ("convert", "images", "service")


def _load_app() -> Any:
    for name in _COMMAND_MODULES:  # each registers its commands on `app`
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


def main() -> None:
    _load_app()()
