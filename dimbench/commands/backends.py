"""`dimbench backends`: the kernel backends and device profiles of this machine."""

from __future__ import annotations

import typer


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
    app.command("backends")(backends)
