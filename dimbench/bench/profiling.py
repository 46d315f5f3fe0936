"""``dimbench profile``'s sweep and report: the device profile and trace folder carried to the
workers as suite options, and the tables of its rows (per configuration, and the categories'
shares side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dimbench.bench.spec import Sweep
from dimbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from dimbench.results import ResultStore

# dimbench profile's settings unless given: one warm-up step, one profiled, a long timeout
DEFAULTS = {"warmup": 1, "repeats": 1, "timeout_s": 600.0}


def measure(
    sweep: Sweep, store: ResultStore, device_profile: Path | None, trace: bool, redo: bool
) -> pd.DataFrame:
    """Profile what is not in ``store`` yet (with ``device_profile`` for the roofline, else this
    machine's; ``trace``: a trace per configuration in OUT/traces/); the sweep's rows."""
    from rich.console import Console

    from dimbench.bench import session
    from dimbench.bench.runner import run_sweep
    from dimbench.bench.suites.profile import PROFILE_OPTION, TRACE_OPTION
    from dimbench.measure import device_profile as dp

    if sweep.warmup < 1:
        raise UsageError("--warmup must be >= 1 (the first step is not representative)")
    roofline = dp.load(device_profile) if device_profile is not None else dp.cached(sweep.device)
    if device_profile is None and roofline is None:
        Console(stderr=True).print(
            f"[dim]no device profile for {sweep.device} ({dp.default_path(sweep.device)}): the "
            "roofline column stays empty; `dimbench calibrate` measures one[/dim]"
        )
    sweep = session.with_options(
        sweep,
        **{
            PROFILE_OPTION: str(Path(device_profile).resolve()) if device_profile else None,
            TRACE_OPTION: str((store.out_dir / "traces").resolve()) if trace else None,
        },
    )
    return run_sweep(sweep, store.out_dir, redo=redo)


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
