"""The typer app every command registers on, the options they share, and `run`.

Every expected failure is an `AcceldError`: `run()` prints it as one line on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from acceld.config import load_config
from acceld.errors import AcceldError
from acceld.registry.stores import Stores

T = TypeVar("T")

app = typer.Typer(
    name="acceld",
    help="Convert OCI images into lazy-pulling formats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[registry/]repo[:tag]" is not markup
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (registries: host → settings).")
]
PlainHttpOption = Annotated[
    bool, typer.Option("--plain-http", help="Talk to every registry over plain HTTP.")
]
InsecureOption = Annotated[bool, typer.Option("--insecure", help="Skip TLS certificate verification.")]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an AcceldError becomes one line on stderr and exit code 1."""
    try:
        return asyncio.run(coroutine)
    except AcceldError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a local file problem that no layer turned into an AcceldError
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def open_stores(config: Path | None, plain_http: bool, insecure: bool) -> Stores:
    return Stores(load_config(config), plain_http=plain_http, insecure=insecure)
