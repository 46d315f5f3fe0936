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

    from dimbench.ops import attention_backends, conv_backends, scan_backends

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        typer.echo(
            f"{dev}: scan={','.join(scan_backends(dev))} "
            f"attention={','.join(attention_backends(dev))} "
            f"conv={','.join(conv_backends(dev))}"
        )


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("backends")(backends)
