"""`dimbench plot DIR`: the scaling figure and summary from a results folder's CSVs."""

from __future__ import annotations

from pathlib import Path

import typer


def plot(
    results_dir: Path = typer.Argument(
        ..., help="A results folder with throughput/memory/flops CSVs", show_default=False
    ),
    fmt: list[str] = typer.Option(["png", "svg"], "--format", help="Figure formats"),
) -> None:
    """Plot throughput, memory and GFLOPs against resolution, and DiM over each baseline.

    Log axes, one line per model, OOM/timeout marked. Writes scaling.png / scaling.svg (one
    pair per device/dtype/mode/batch group) and summary.md (where DiM overtakes each
    baseline) beside the CSVs.
    """
    from dimbench.bench.registry import schemas
    from dimbench.errors import UsageError
    from dimbench.paths import writable_dir
    from dimbench.results import load_results

    if not results_dir.is_dir():
        raise UsageError(f"{results_dir} is not a folder")
    if not any(results_dir.glob("*.csv")):
        raise UsageError(f"no result CSVs in {results_dir}; run `dimbench run SUITE` first")
    for f in fmt:
        if f not in ("png", "svg", "pdf"):
            raise UsageError(f"unknown figure format {f!r}; valid: png, svg, pdf")
    rows = load_results(results_dir, schemas())
    if rows.empty:
        raise UsageError(
            f"no result rows in {results_dir} (no dimbench CSVs, or only their headers); "
            "run `dimbench run SUITE --out DIR` first"
        )
    writable_dir(results_dir, "RESULTS_DIR")  # the figures and summary.md go beside the CSVs
    from dimbench.plots.folder import plot_results
    from dimbench.plots.summary import write_summary

    out = plot_results(results_dir, formats=tuple(fmt), rows=rows)
    summary = write_summary(results_dir, rows, out)
    for path in out["figures"]:
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {summary}")
    for label, items in out["crossovers"].items():
        for c in items:
            typer.echo(f"[{label}] {c.sentence()}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)
