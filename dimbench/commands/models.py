"""`dimbench models`: the registered model names."""

from __future__ import annotations

import typer


def models() -> None:
    """List the registered model names."""
    from dimbench.registry import list_models

    for name in list_models():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
