"""`dimbench models` and `dimbench backends`: what this install can run."""

from __future__ import annotations

import typer


def models() -> None:
    """List the registered model names."""
    from dimbench.registry import list_models

    for name in list_models():
        typer.echo(name)


def backends() -> None:
    """List the kernel backends usable on this machine (fastest first) and its device
    profiles (dimbench calibrate)."""
    import torch

    from dimbench.measure import device_profile
    from dimbench.ops.backends import available
    from dimbench.registry import KERNELS

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        typer.echo(f"{dev}: " + " ".join(f"{k}={','.join(available(k, dev))}" for k in KERNELS))
    for dev in devices:  # what `dimbench calibrate` measured here
        profile = device_profile.cached(dev)
        if profile is None:
            typer.echo(
                f"{dev}: no device profile ({device_profile.default_path(dev)}); "
                "`dimbench calibrate` measures one"
            )
        else:
            typer.echo(device_profile.describe(profile))


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("backends")(backends)
