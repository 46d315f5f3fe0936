"""`dimbench kernel-report BENCH.json`: the kernel benchmarks' table (speed-ups, GFLOP/s)."""

from __future__ import annotations

from pathlib import Path

import typer

from dimbench.cli import options as o

MarkdownFile = o.out("Write the Markdown here [stdout]")


def kernel_report(
    benchmarks: Path = typer.Argument(
        ...,
        help="pytest-benchmark JSON of benchmarks/ (pytest benchmarks -m bench "
        "--benchmark-enable --benchmark-json=FILE)",
        show_default=False,
    ),
    out: MarkdownFile = None,
) -> None:
    """Summarise a kernel benchmark run: per length, every scan backend's forward and
    forward+backward median, their ratio, the speed-up over `ref` in the same run, and the
    achieved GFLOP/s beside the run's fp32 matmul."""
    from dimbench.measure.kernel_report import load, report
    from dimbench.paths import writable_file

    if out is not None:
        writable_file(out, "--out")
    text = report(load(benchmarks))
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("kernel-report")(kernel_report)
