"""`dimbench profile`: where a step's time and memory go, per operator category and block."""

from typing import Annotated

import typer

from dimbench.bench.profiling import DEFAULTS
from dimbench.bench.spec import Sweep
from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

ModelArgs = Annotated[
    list[str] | None,
    typer.Argument(
        help="Registry names, e.g. DiM-S/2 DiT-S/2 [the suites' defaults]",
        show_default=False,
        metavar="MODEL...",
    ),
]
Warmup = Annotated[int, typer.Option("--warmup", help="Unprofiled steps first")]
Repeats = Annotated[int, typer.Option("--repeats", help="Profiled steps (their mean is reported)")]
Trace = Annotated[
    bool,
    typer.Option(
        "--trace", help="Also write a Chrome/Perfetto trace per configuration to OUT/traces/"
    ),
]

ResultsDir = o.out("Results folder [runs/<machine>/]")


def profile(
    model_args: ModelArgs = None,
    models: o.Models = None,
    res: o.Resolutions = None,
    batch_size: o.BatchSizes = o.default(Sweep, "batch_sizes"),
    device: o.Device = DEFAULT_DEVICE,
    dtype: o.Dtypes = o.default(Sweep, "dtypes"),
    mode: o.Modes = o.default(Sweep, "modes"),
    warmup: Warmup = DEFAULTS["warmup"],
    repeats: Repeats = DEFAULTS["repeats"],
    trace: Trace = False,
    device_profile: o.DeviceProfile = None,
    timeout: o.Timeout = DEFAULTS["timeout_s"],
    threads: o.Threads = None,
    redo: o.Redo = False,
    memory_check: o.MemoryCheck = o.default(Sweep, "memory_check"),
    out: ResultsDir = None,
) -> None:
    """Profile each (model, resolution): time, FLOPs, bytes, GFLOP/s, GB/s and share of the
    device's roofline per operator category; time per block; peak memory and what holds it.

    Each configuration runs in its own process under torch.profiler (CPU time on a CPU, the
    device's kernel time on CUDA). Rows go to OUT/profile.csv; the figure (stacked time per
    category against resolution, a panel per model) to OUT/profile.png.

    Example: dimbench profile DiM-S/2 DiT-S/2 --res 512 1536
    """
    from dimbench.bench import profiling, session
    from dimbench.plots.profile import plot_profile

    sweep = session.plan(
        "profile", [*(model_args or []), *(models or [])], res, device,
        batch_sizes=list(batch_size), dtypes=list(dtype), modes=list(mode),
        warmup=warmup, repeats=repeats, timeout_s=timeout, threads=threads,
        memory_check=memory_check,
    )  # fmt: skip
    with session.results_store(sweep, out) as store:
        df = profiling.measure(sweep, store, device_profile, trace, redo)
        figures = plot_profile(store.out_dir)
    console = session.result_console()
    for table in profiling.profile_tables(df):
        console.print(table)
    console.print(f"rows in {store.csv_path}")
    for path in figures:
        console.print(f"wrote {path}")
    if trace:
        console.print(f"traces in {store.out_dir / 'traces'} (open in https://ui.perfetto.dev)")
    if session.report_errors(df, store, console):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
