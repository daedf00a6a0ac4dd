"""The typer app every command registers on, the options they share, and `run`.

Every expected failure is an `AcceldError`: `run()` prints it as one line on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

import acceld
from acceld.config import load_config
from acceld.errors import AcceldError
from acceld.registry.stores import Stores

T = TypeVar("T")



class FullSummaryGroup(TyperGroup):
    """Lists each command with its whole first sentence (click cuts summaries at ~45 characters)."""

    # Any: typer may vendor its own click, whose Context and HelpFormatter these are.
    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="acceld",
    cls=FullSummaryGroup,
    help="Convert OCI images into lazy-pulling formats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[registry/]repo[:tag]" is not markup
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"acceld {acceld.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Convert OCI images into lazy-pulling formats."""

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
