"""`dimbench regress`: speed gate, exit 1 when a kernel or block got slower than its baseline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

REGRESS_HELP = "\n\n".join(
    [
        "Run the gate's benchmarks and compare them with the stored baseline of this machine "
        "class (CPU model and cores, or GPU name). Exit 1 on a regression, 0 otherwise.",
        "Benchmarks: every available selective-scan backend (forward, forward+backward), the "
        "attention backends, the causal conv, one DiM and one DiT block forward+backward, at "
        "sizes of milliseconds per call, on one torch thread. Each round runs all of them and "
        "three calibration kernels (an fp32 matmul, a small MLP training step and a softmax) in "
        "a shuffled order; every "
        "sample is divided by its round's calibration, so a slower or busier machine does not "
        "read as a regression. CPU time is the clock on the CPU.",
        "A benchmark regresses when its median is more than --threshold slower than the "
        "baseline's AND a one-sided Mann-Whitney U test on both runs' samples gives p < --alpha; "
        "a suspect is measured again in fresh rounds and fails only if the re-run agrees.",
        "No baseline for this machine class: reported, exit 0. --update records one "
        "(results/baselines/<machine-class>.json: raw samples, machine, commit).",
    ]
)

VERDICT_STYLE = {
    "regression": "bold red",
    "noisy": "yellow",
    "unconfirmed": "yellow",
    "faster": "green",
    "ok": "green",
    "changed": "cyan",
    "new": "cyan",
    "missing": "cyan",
    "recorded": "cyan",
}


def regress(
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="Baseline .json file, or a folder holding <machine-class>.json "
        "[results/baselines/ in the dimbench checkout]",
        show_default=False,
    ),
    threshold: float = typer.Option(
        0.15, "--threshold", help="Slowdown that fails the gate: 0.15 = more than 15% slower"
    ),
    alpha: float = typer.Option(
        0.01, "--alpha", help="Significance level of the one-sided Mann-Whitney U test"
    ),
    rounds: int = typer.Option(
        60, "--rounds", help="Interleaved rounds (samples per benchmark), at least 5"
    ),
    update: bool = typer.Option(
        False, "--update", help="Record this run as the baseline of this machine class"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled order within rounds"),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Also write the full report (verdicts, statistics, raw samples) to this file",
        show_default=False,
    ),
) -> None:
    started = time.perf_counter()
    from rich.console import Console

    from dimbench.errors import UsageError

    if not 0 < threshold < 10:
        raise UsageError(f"--threshold must be in (0, 10), got {threshold}")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {alpha}")
    if rounds < 5:
        raise UsageError(f"--rounds must be >= 5 (fewer cannot reach significance), got {rounds}")
    _check_device(device)
    if baseline is not None and not update and not baseline.exists():
        raise UsageError(
            f"--baseline {baseline}: no such file or folder "
            f"(record one with `dimbench regress --update --baseline {baseline}`)"
        )

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dimbench.measure.regress import run_gate

    console = Console()
    if not console.is_terminal:  # a CI log: wide enough for the whole table
        console = Console(width=120)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def on_round(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{stage} rounds", total=total)
            bar.update(tasks[stage], completed=done)

        result = run_gate(
            baseline=baseline,
            threshold=threshold,
            alpha=alpha,
            rounds=rounds,
            update=update,
            device=device,
            seed=seed,
            on_round=on_round,
        )
    elapsed = time.perf_counter() - started

    if result.rows:
        console.print(_table(result))
    if result.machine_ratio is not None:
        console.print(
            f"calibration kernels ran {result.machine_ratio:.2f}x the baseline's time "
            "(every ratio above is already divided by this)"
        )
    base_load, now_load = result.load
    if base_load is not None and now_load is not None:
        # cache and memory contention slows memory-bound kernels more than the calibration
        console.print(
            f"load average: {base_load:.1f} when the baseline was recorded, {now_load:.1f} now",
            highlight=False,
        )
    style = {"regression": "bold red", "pass": "green"}.get(result.status, "cyan")
    console.print(f"[{style}]{result.status}[/]: {result.message}", highlight=False)
    console.print(f"gate took {elapsed:.1f} s", highlight=False)
    if json_out is not None:
        report = {**result.to_dict(), "elapsed_s": elapsed}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    raise typer.Exit(result.exit_code)


def _check_device(device: str) -> None:
    from dimbench.errors import UsageError

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device on this machine")


def _table(result):
    from rich.table import Table
    from rich.text import Text

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1e3:.3f}"

    table = Table(
        title=f"speed gate, {result.machine_class} "
        f"(threshold {result.threshold:.0%}, alpha {result.alpha:g})",
        title_justify="left",
    )
    table.add_column("benchmark")
    table.add_column("baseline ms", justify="right")
    table.add_column("now ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("p", justify="right")
    table.add_column("verdict")
    for row in result.rows:
        c = row.comparison
        ratio, p = "-", "-"
        if c is not None:
            ratio, p = f"{c.ratio:.3f}", f"{c.p_slower:.2g}"
        if row.confirmation is not None:
            ratio += f" / {row.confirmation.ratio:.3f}"
            p += f" / {row.confirmation.p_slower:.2g}"
        verdict = row.verdict
        table.add_row(
            Text(row.name),
            ms(row.baseline_s),
            ms(row.now_s),
            ratio,
            p,
            Text(verdict, style=VERDICT_STYLE.get(verdict, "")),
        )
    table.caption = (
        "ms: median per call; ratio: now / baseline of calibration-normalised medians; "
        "p: one-sided Mann-Whitney U (now slower); a / b: first run / re-run"
    )
    return table


def register(app: typer.Typer) -> None:
    app.command("regress", help=REGRESS_HELP)(regress)
