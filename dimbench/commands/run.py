"""`dimbench run SUITE`: sweep throughput, memory or FLOPs against resolution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from dimbench.results import ResultStore

SUITES_HELP = "throughput | memory | flops, or a suite an --import module registers"


def run(
    suite: str = typer.Argument(..., help=SUITES_HELP, show_default=False),
    res: list[int] = typer.Option(
        None, "--res", help="Image sizes in px, e.g. --res 256 512 1024 1536 [256 512 1024 1536]"
    ),
    models: list[str] = typer.Option(
        None,
        "--models",
        help="Registry names, e.g. --models DiM-S/2 DiT-S/2 (see `dimbench models`). "
        "Default: DiM-S/2 DiT-S/2 U-ViT-S/2 on CPU, DiM-H/2 DiT-XL/2 U-ViT-H/2 on a GPU; "
        "flops: DiM-L/2 DiM-H/2 DiT-XL/2 U-ViT-H/2",
    ),
    batch_size: list[int] = typer.Option(
        [1], "--batch-size", help="Batch sizes, space-separated, e.g. --batch-size 1 8"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    dtype: list[str] = typer.Option(
        ["fp32"], "--dtype", help="fp32 | bf16 | fp16 (autocast), space-separated"
    ),
    mode: list[str] = typer.Option(
        ["forward"],
        "--mode",
        help="forward | train (forward + backward + AdamW step), space-separated",
    ),
    warmup: int = typer.Option(None, "--warmup", help="Untimed warm-up steps [CPU 1, GPU 3]"),
    repeats: int = typer.Option(
        None, "--repeats", help="Timed repeats at most (fewer past --budget) [CPU 10, GPU 20]"
    ),
    budget: float = typer.Option(
        None,
        "--budget",
        help="Seconds of timed repeats per configuration: no further repeat starts once the "
        "next would pass it (one always runs; a single repeat has IQR 0) [CPU 20, GPU 10]",
    ),
    timeout: float = typer.Option(
        300.0, "--timeout", help="Seconds per configuration before its process is killed"
    ),
    scan_backend: str = typer.Option(
        "auto",
        "--scan-backend",
        help="Selective scan for the models that have one (DiM); `dimbench backends` lists them",
    ),
    attn_backend: str = typer.Option(
        "auto", "--attn-backend", help="Attention for the models that have it (DiT, U-ViT)"
    ),
    conv_backend: str = typer.Option(
        "auto", "--conv-backend", help="Causal conv1d for the models that have it (DiM)"
    ),
    compile: bool = typer.Option(
        False,
        "--compile/--eager",
        help="Every model through torch.compile (inductor; compiled during the warm-up, which "
        "then takes tens of seconds); recorded in each row's compile column [eager]",
    ),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="Load these weights (a dimbench checkpoint, or a released DiM nnet_ema.pth for "
        "the DiM-*-imagenet* models) into every model [random initialisation]",
        show_default=False,
    ),
    threads: int = typer.Option(None, "--threads", help="torch threads [torch's default]"),
    omp_wait_policy: str = typer.Option(
        None,
        "--omp-wait-policy",
        help="passive | active: OpenMP threads sleep or spin while idle. Spinning threads on a "
        "shared CPU wait for descheduled peers and slow every step by up to 10x "
        "[$OMP_WAIT_POLICY, else passive]",
        show_default=False,
    ),
    sample_steps: int = typer.Option(
        50, "--sample-steps", help="Sampler steps for the derived sampling-run latency"
    ),
    redo: bool = typer.Option(
        False, "--redo", help="Measure every configuration again; new rows supersede old ones"
    ),
    retry_failed: bool = typer.Option(
        True,
        "--retry-failed/--skip-failed",
        help="On a rerun, measure timeouts and errors again (ok and oom rows are always kept)",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Results folder [runs/<machine>/, e.g. runs/amd-epyc-avx2-2c/; the published "
        "results live in results/<machine>/]",
        show_default=False,
    ),
) -> None:
    """Measure SUITE for every (model, resolution, batch, dtype, mode), each in its own process.

    Rows are appended to OUT/SUITE.csv as they finish (raw samples to OUT/SUITE.samples.jsonl);
    a rerun with the same --out skips what is already there. OOM, timeout and crashes are rows.

    Example: dimbench run throughput --res 256 512 1024 1536
    """
    from rich.console import Console

    from dimbench.bench.registry import get_suite
    from dimbench.bench.runner import run_sweep, summary_table
    from dimbench.bench.spec import DEFAULT_RESOLUTIONS, Sweep
    from dimbench.devices import parse_device
    from dimbench.errors import UsageError
    from dimbench.paths import writable_dir
    from dimbench.results import ResultStore
    from dimbench.threads import omp_policy_in_effect

    the_suite = get_suite(suite)
    device = parse_device(device)
    on_gpu = device.startswith("cuda")
    chosen = list(models) if models else list(the_suite.default_models(device))
    if not models:
        from dimbench.registry import list_models

        registered = set(list_models())
        missing = [m for m in chosen if m not in registered]
        chosen = [m for m in chosen if m in registered]
        if not chosen:
            raise UsageError(
                f"none of the default models ({', '.join(missing)}) is registered; "
                "name some with --models"
            )
        if missing:
            Console(stderr=True).print(f"[yellow]not registered, skipped: {', '.join(missing)}")
    sweep = Sweep(
        suite=the_suite,
        models=chosen,
        resolutions=list(res) if res else list(DEFAULT_RESOLUTIONS),
        batch_sizes=list(batch_size),
        dtypes=list(dtype),
        modes=list(mode),
        device=device,
        scan_backend=scan_backend,
        attn_backend=attn_backend,
        conv_backend=conv_backend,
        compile="inductor" if compile else "eager",
        weights=str(weights) if weights else "",
        warmup=warmup if warmup is not None else (3 if on_gpu else 1),
        repeats=repeats if repeats is not None else (20 if on_gpu else 10),
        budget_s=budget if budget is not None else (10.0 if on_gpu else 20.0),
        timeout_s=timeout,
        sample_steps=sample_steps,
        threads=threads,
        omp_wait_policy=omp_wait_policy or omp_policy_in_effect().lower() or None,
    )
    sweep.validate()
    out_dir = writable_dir(out if out is not None else default_out(device))
    store = ResultStore(out_dir, the_suite.schema)
    store.check()
    df = run_sweep(sweep, out_dir, retry_failed=retry_failed, redo=redo)
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the whole table
        console = Console(width=160)
    console.print(summary_table(the_suite, df))
    console.print(f"rows in {store.csv_path}")
    exit_on_errors(df, store, console)


def exit_on_errors(df: pd.DataFrame, store: ResultStore, console: Console) -> None:
    """Exit 1, saying where the tracebacks are, when a configuration of the sweep crashed."""
    from dimbench.bench.runner import errors_log

    errors = int((df["status"] == "error").sum()) if len(df) else 0
    if errors:
        console.print(
            f"[red]{errors} configuration{'s' * (errors > 1)} ended in error[/red] (a crash, "
            f"unlike oom and timeout): the error column of {store.csv_path} says why, the "
            f"workers' tracebacks are in {errors_log(store)}",
            highlight=False,
        )
        raise typer.Exit(1)


def default_out(device: str) -> Path:
    """Where a run's rows go unless --out says: ``runs/<machine>/``, apart from the project's
    published results in ``results/``, so a first run measures instead of resuming them."""
    from dimbench.measure.metadata import machine_slug

    return Path("runs") / machine_slug(device)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
