"""`dimbench calibrate`: this device's ceilings and operator costs, into a device profile."""

from pathlib import Path
from typing import Annotated

import typer

from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

CALIBRATED_DTYPES = ("fp32", "bf16")  # the precisions predict and profile price by default
ProfileFile = o.out(
    "Profile file [~/.cache/dimbench/devices/<machine>.json, where profile and predict look for it]"
)
Show = Annotated[
    bool, typer.Option("--show", help="Print the profile (--out, else this machine's) and exit")
]
Clock = Annotated[
    str,
    typer.Option(
        "--clock",
        help="wall | process: process CPU time instead of wall time (with --threads 1 on a "
        "shared machine; compare with forward times taken the same way)",
    ),
]
Budget = Annotated[
    float, typer.Option("--budget", help="Timed seconds per ceiling (at least three calls each)")
]


def calibrate(
    device: o.Device = DEFAULT_DEVICE,
    out: ProfileFile = None,
    show: Show = False,
    models: o.Models = None,
    res: o.Resolutions = None,
    dtype: o.Dtypes = CALIBRATED_DTYPES,
    threads: o.Threads = None,
    clock: Clock = "wall",
    budget: Budget = 0.03,
) -> None:
    """Measure this device's ceilings and the cost of the models' operators, once.

    Matmul GFLOP/s over the shapes the models use (fp32 and bf16), copy bandwidth and
    elementwise throughput over sizes, attention and the scan over L, convs, norms, per-operator
    dispatch cost. About 1-2 minutes on a 2-core CPU. `dimbench profile` reads the profile for
    each category's share of the roofline, `dimbench predict` to price operators.
    """
    from rich.console import Console

    from dimbench.bench.spec import DEFAULT_RESOLUTIONS, DTYPES
    from dimbench.devices import parse_device
    from dimbench.errors import UsageError
    from dimbench.measure import device_profile as dp
    from dimbench.paths import writable_file
    from dimbench.registry import get_model

    device = parse_device(device, allow_auto=True)
    target = out if out is not None else dp.default_path(device)
    if show:
        if not Path(target).is_file():
            raise UsageError(f"no device profile at {target}; run `dimbench calibrate` first")
        typer.echo(dp.describe(dp.load(target)))
        return
    if clock not in ("wall", "process"):
        raise UsageError(f"--clock {clock!r}: valid: wall, process")
    if budget <= 0:
        raise UsageError("--budget must be positive")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    for d in dtype:
        if d not in DTYPES:
            raise UsageError(f"unknown dtype {d!r}; valid: {', '.join(DTYPES)}")
    from dimbench.bench.registry import get_suite

    chosen = list(models) if models else list(get_suite("throughput").default_models(device))
    resolutions = list(res) if res else list(DEFAULT_RESOLUTIONS)
    for m in chosen:
        for r in resolutions:
            get_model(m).input_size(r)
    writable_file(target, "--out")

    import torch

    from dimbench.measure.calibrate import Options
    from dimbench.measure.calibrate import calibrate as run_calibration

    if threads:
        torch.set_num_threads(threads)
    console = Console(stderr=True)
    opts = Options(
        models=chosen,
        resolutions=resolutions,
        dtypes=list(dtype),
        device=device,
        clock=clock,
        budget_s=budget,
    )
    from dimbench.cli.progress import stage_progress

    with stage_progress(console, "calibrate") as report:
        profile = run_calibration(opts, progress=report)
    profile.save(target)
    typer.echo(dp.describe(profile))


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
