"""`dimbench models` and `dimbench backends`: what this install can run."""

from __future__ import annotations

import typer


def models() -> None:
    """List the registered model names."""
    from dimbench.registry import list_models

    for name in list_models():
        typer.echo(name)


def backends() -> None:
    """List the kernel backends usable on this machine (fastest first)."""
    import torch

    from dimbench.ops.backends import available
    from dimbench.registry import KERNELS

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        typer.echo(f"{dev}: " + " ".join(f"{k}={','.join(available(k, dev))}" for k in KERNELS))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("backends")(backends)
