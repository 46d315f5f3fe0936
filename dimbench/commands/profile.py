"""`dimbench profile`: where a step's time and memory go, per operator category and block."""

from __future__ import annotations

from pathlib import Path

import typer


def profile(
    model_args: list[str] = typer.Argument(
        None,
        help="Registry names, e.g. DiM-S/2 DiT-S/2 [the suites' defaults]",
        show_default=False,
        metavar="MODEL...",
    ),  # fmt: skip
    models: list[str] = typer.Option(None, "--models", help="More models (as MODEL...)"),
    res: list[int] = typer.Option(
        None, "--res", help="Image sizes in px, space-separated [256 512 1024 1536]"
    ),
    batch_size: list[int] = typer.Option([1], "--batch-size", help="Batch sizes"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    dtype: list[str] = typer.Option(["fp32"], "--dtype", help="fp32 | bf16 | fp16 (autocast)"),
    mode: list[str] = typer.Option(
        ["forward"], "--mode", help="forward | train (forward + backward + AdamW step)"
    ),
    warmup: int = typer.Option(1, "--warmup", help="Unprofiled steps first"),
    repeats: int = typer.Option(1, "--repeats", help="Profiled steps (their mean is reported)"),
    trace: bool = typer.Option(
        False, "--trace", help="Also write a Chrome/Perfetto trace per configuration to OUT/traces/"
    ),
    device_profile: Path = typer.Option(
        None,
        "--device-profile",
        help="Device profile for the roofline shares [this machine's, from dimbench calibrate]",
        show_default=False,
    ),
    timeout: float = typer.Option(
        600.0, "--timeout", help="Seconds per configuration before its process is killed"
    ),
    threads: int = typer.Option(None, "--threads", help="torch threads [torch's default]"),
    redo: bool = typer.Option(False, "--redo", help="Profile configurations already in OUT"),
    out: Path = typer.Option(
        None, "--out", help="Results folder [runs/<machine>/]", show_default=False
    ),
) -> None:
    """Profile each (model, resolution): time, FLOPs, bytes, GFLOP/s, GB/s and share of the
    device's roofline per operator category; time per block; peak memory and what holds it.

    Each configuration runs in its own process under torch.profiler (CPU time on a CPU, the
    device's kernel time on CUDA). Rows go to OUT/profile.csv; the figure (stacked time per
    category against resolution, a panel per model) to OUT/profile.png.

    Example: dimbench profile DiM-S/2 DiT-S/2 --res 512 1536
    """
    from rich.console import Console

    from dimbench.bench.registry import get_suite
    from dimbench.bench.runner import run_sweep
    from dimbench.bench.spec import DEFAULT_RESOLUTIONS, Sweep
    from dimbench.bench.suites.profile import PROFILE_ENV, TRACE_ENV
    from dimbench.commands.run import default_out, exit_on_errors
    from dimbench.devices import parse_device
    from dimbench.errors import UsageError
    from dimbench.measure import device_profile as dp
    from dimbench.paths import writable_dir
    from dimbench.results import ResultStore
    from dimbench.threads import omp_policy_in_effect

    suite = get_suite("profile")
    device = parse_device(device)
    chosen = list(model_args or []) + list(models or [])
    if not chosen:
        chosen = list(suite.default_models(device))
    sweep = Sweep(
        suite=suite,
        models=chosen,
        resolutions=list(res) if res else list(DEFAULT_RESOLUTIONS),
        batch_sizes=list(batch_size),
        dtypes=list(dtype),
        modes=list(mode),
        device=device,
        warmup=warmup,
        repeats=repeats,
        timeout_s=timeout,
        threads=threads,
        omp_wait_policy=omp_policy_in_effect().lower() or None,
    )
    sweep.validate()
    if warmup < 1:
        raise UsageError("--warmup must be >= 1 (the first step is not representative)")
    roofline = dp.load(device_profile) if device_profile is not None else dp.cached(device)
    out_dir = writable_dir(out if out is not None else default_out(device))
    store = ResultStore(out_dir, suite.schema)
    store.check()
    console = Console(stderr=True)
    env = {}  # what the workers read
    if device_profile is not None:
        env[PROFILE_ENV] = str(Path(device_profile).resolve())
    elif roofline is None:
        console.print(
            f"[dim]no device profile for {device} ({dp.default_path(device)}): the roofline "
            "column stays empty; `dimbench calibrate` measures one[/dim]"
        )
    if trace:
        env[TRACE_ENV] = str((out_dir / "traces").resolve())
    df = run_sweep(sweep, out_dir, redo=redo, env=env)
    out_console = Console() if Console().is_terminal else Console(width=160)
    from dimbench.plots.profile import plot_profile

    for table in profile_tables(df):
        out_console.print(table)
    figures = plot_profile(out_dir)
    out_console.print(f"rows in {store.csv_path}")
    for path in figures:
        out_console.print(f"wrote {path}")
    if trace:
        out_console.print(f"traces in {out_dir / 'traces'} (open in https://ui.perfetto.dev)")
    exit_on_errors(df, store, out_console)


def profile_tables(df) -> list:
    """One table per configuration (category rows: ms, share, GFLOP/s, GB/s, % of the
    roofline, GFLOPs, GB), then the categories' shares side by side."""
    from rich.table import Table

    from dimbench.bench.spec import fmt
    from dimbench.measure.op_categories import CATEGORIES

    if df.empty:
        return []
    tables = []
    ok = df[df["status"] == "ok"]
    configs = ok[["model", "image_size", "batch_size", "dtype", "mode", "device"]]
    configs = configs.drop_duplicates().sort_values(["model", "image_size"])
    shares = Table(title="time per category (share of the profiled step)", title_justify="left")
    shares.add_column("category")
    columns = []
    varying = [f for f in ("batch_size", "dtype", "mode", "device") if configs[f].nunique() > 1]
    for cfg in configs.to_dict("records"):
        rows = ok[(ok[list(cfg)] == list(cfg.values())).all(axis=1)]
        model_rows = rows[rows["scope"] == "model"].set_index("category")
        if "total" not in model_rows.index:
            continue
        total = model_rows.loc["total"]
        label = f"{cfg['model']} {cfg['image_size']}px"
        extra = f" b{cfg['batch_size']} {cfg['dtype']} {cfg['mode']} {cfg['device']}"
        t = Table(
            title=f"{label}{extra}: {fmt(total['time_ms'], '.1f')} ms profiled, peak "
            f"{fmt(total['mem_mb'], '.0f')} MB",
            title_justify="left",
        )
        for name in ("category", "ms", "share", "GFLOP/s", "GB/s", "% roofline", "GFLOP", "GB"):
            t.add_column(name, justify="left" if name == "category" else "right")
        for category in (*CATEGORIES, "total"):
            if category not in model_rows.index:
                continue
            r = model_rows.loc[category]
            if category != "total" and not (r["time_ms"] or 0) > 0 and not (r["gflops"] or 0):
                continue
            t.add_row(
                category, fmt(r["time_ms"], ".1f"), fmt(r["share"], ".1%"),
                fmt(r["gflops_s"], ".3g"), fmt(r["gbytes_s"], ".3g"),
                fmt(r["roofline_pct"], ".0f"), fmt(r["gflops"], ".3g"), fmt(r["gbytes"], ".3g"),
            )  # fmt: skip
        blocks = rows[rows["scope"].astype(str).str.startswith("block:")]
        memory = rows[rows["scope"] == "memory"].set_index("category")
        notes = []
        if len(blocks):
            ms = blocks["time_ms"].astype(float)
            slow = blocks.loc[ms.idxmax()]
            notes.append(
                f"{len(blocks)} blocks: mean {ms.mean():.1f} ms, slowest {slow['scope'][6:]} "
                f"{ms.max():.1f} ms"
            )
        holders = [
            f"{memory.loc[k, 'op']} {fmt(memory.loc[k, 'mem_mb'], '.0f')} MB"
            for k in memory.index
            if str(k).startswith("top")
        ]
        if holders:
            held = memory.loc["held", "mem_mb"] if "held" in memory.index else None
            notes.append(
                f"held before the step {fmt(held, '.0f')} MB; at the peak: " + ", ".join(holders)
            )
        t.caption = "\n".join(notes) or None
        t.caption_justify = "left"
        tables.append(t)
        # side by side: what tells the columns apart (b1, fp32 and bf16 under each other)
        parts = [f"b{cfg[f]}" if f == "batch_size" else str(cfg[f]) for f in varying]
        columns.append((" ".join([label, *parts]), model_rows))
    for label, _ in columns:
        shares.add_column(label, justify="right")
    for category in CATEGORIES:
        cells = []
        for _, model_rows in columns:
            r = model_rows.loc[category] if category in model_rows.index else None
            cells.append(
                "-" if r is None else f"{fmt(r['time_ms'], '.0f')} ({fmt(r['share'], '.0%')})"
            )
        if any(c not in ("-", "0 (0%)") for c in cells):
            shares.add_row(category, *cells)
    if len(columns) > 1:
        tables.append(shares)
    return tables


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
