"""The `acceld` command line: typer commands over the library, one module per area."""

from __future__ import annotations

from acceld.cli import convert, images, service
from acceld.cli.app import app

__all__ = ["app", "convert", "images", "main", "service"]


def main() -> None:
    app()
