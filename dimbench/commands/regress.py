"""`dimbench regress`: speed gate, exit 1 when a kernel or block got slower than on the base."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

REGRESS_HELP = "\n\n".join(
    [
        "Measure the source tree this is run from (the head, uncommitted edits included) "
        "against a base revision, side by side in one run, and exit 1 when a benchmark got "
        "slower (0 otherwise, 2 on bad input). It does not matter which dimbench is installed: "
        "each side runs in its own worker process that imports dimbench from its own tree (the "
        "base is checked out as a temporary git worktree, its C++ kernel built from its own "
        "source).",
        "Benchmarks (the head's): the selective scan forward and forward+backward and the "
        "causal conv (the cpu C++ backends; triton and auto on CUDA), attention, one DiM and "
        "one DiT block forward+backward, at sizes of milliseconds per call, on one torch "
        "thread. Each round runs every benchmark and three calibration kernels (an fp32 "
        "matmul, a small MLP training step, a softmax) once on each side, in one shuffled "
        "order; every sample is divided by its side's calibration of the round. The clock is "
        "CPU time on the CPU, CUDA events on a GPU.",
        "A benchmark regresses when the head's normalised median is more than --threshold "
        "above the base's AND a one-sided Mann-Whitney U test gives p < --alpha; then both "
        "sides are measured again in fresh processes and rounds, and it fails only if the "
        "re-run agrees.",
        "--baseline FILE compares the head with a stored baseline's samples instead; --update "
        "records one (results/baselines/<machine-class>.json unless --baseline names it).",
    ]
)

VERDICT_STYLE = {
    "regression": "bold red",
    "error": "bold red",
    "noisy": "yellow",
    "unconfirmed": "yellow",
    "faster": "green",
    "ok": "green",
    "changed": "cyan",
    "new": "cyan",
    "missing": "cyan",
    "recorded": "cyan",
}
UNWRITABLE_ROOTS = ("/proc", "/sys", "/dev")


def regress(
    base: str | None = typer.Option(
        None,
        "--base",
        help="Base revision (any git revision) [default: the merge base with the upstream "
        "branch when that is not HEAD itself, else HEAD~1]",
        show_default=False,
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="Compare with this stored baseline (.json, or a folder holding "
        "<machine-class>.json) instead of a base revision",
        show_default=False,
    ),
    update: bool = typer.Option(
        False,
        "--update",
        help="Record the head as the baseline of this machine class [default file: "
        "results/baselines/<machine-class>.json in the source tree, or --baseline]",
    ),
    threshold: float = typer.Option(
        0.08, "--threshold", help="Slowdown that fails the gate: 0.08 = more than 8% slower"
    ),
    alpha: float = typer.Option(
        0.01, "--alpha", help="Significance level of the one-sided Mann-Whitney U test"
    ),
    rounds: int = typer.Option(
        60, "--rounds", help="Interleaved rounds (samples per benchmark and side), at least 5"
    ),
    device: o.Device = DEFAULT_DEVICE,
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled order of the rounds"),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Also write the full report (revisions, machine, verdicts, statistics, raw "
        "samples) to this file",
        show_default=False,
    ),
) -> None:
    started = time.perf_counter()
    from rich.console import Console

    from dimbench import regress as gate
    from dimbench.devices import parse_device
    from dimbench.errors import UsageError, terminate_as_interrupt

    if not 0 < threshold < 10:
        raise UsageError(f"--threshold must be in (0, 10), got {threshold}")
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {alpha}")
    if rounds < 5:
        raise UsageError(f"--rounds must be >= 5 (fewer cannot reach significance), got {rounds}")
    if base is not None and (baseline is not None or update):
        raise UsageError(
            "--base compares with a revision, --baseline/--update with a file: not both"
        )
    device = parse_device(device, allow_auto=True)
    root = gate.source_tree()
    head = gate.head_revision(root)
    config = gate.GateConfig(
        threshold=threshold, alpha=alpha, rounds=rounds, device=device, seed=seed
    )
    if json_out is not None:
        check_writable(json_out, "--json")
    if baseline is not None or update:
        path = gate.baseline_path(baseline, gate.machine_class(device), root)
        if update:
            check_writable(path, "--baseline" if baseline is not None else "--update")
        else:
            if not path.exists():
                raise UsageError(
                    f"--baseline {baseline}: no such file ({path}; record one with "
                    f"`dimbench regress --update --baseline {baseline}`)"
                )
            gate.check_baseline(head, path, config)
    else:
        base_rev = gate.resolve_base(root, base)

    console = Console()
    if not console.is_terminal:  # a CI log: wide enough for the whole table
        console = Console(width=120)
    try:
        with _progress_bar() as on_round, terminate_as_interrupt():
            if update:
                result = gate.record_baseline(head, path, config, on_round)
            elif baseline is not None:
                result = gate.run_baseline(head, path, config, on_round)
            else:
                result = gate.run_ab(head, base_rev, config, on_round)
    except gate.WorkerError as e:
        Console(stderr=True).print(f"error: {e}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    _report(console, result, elapsed)
    if json_out is not None:
        report = {**result.to_dict(), "elapsed_s": elapsed}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1) + "\n")
    raise typer.Exit(result.exit_code)


def check_writable(path: Path, option: str) -> None:
    """That ``path`` can be written (its folder created if needed), checked before measuring."""
    from dimbench.errors import UsageError

    target = Path(os.path.abspath(path))
    if any(target == Path(r) or Path(r) in target.parents for r in UNWRITABLE_ROOTS):
        raise UsageError(f"{option} {path}: cannot write a file under {target.parts[1]}/")
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as e:
        raise UsageError(f"{option} {path}: not writable ({e.strerror or e})") from None


@contextlib.contextmanager
def _progress_bar() -> Iterator:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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

        yield on_round


def _report(console, result, elapsed: float) -> None:
    if result.rows:
        console.print(_table(result))
    for row in result.rows:
        if row.note:
            console.print(f"{row.name}: {row.note}", highlight=False, markup=False)
    for label, side in (("base", result.base), ("head", result.head)):
        workers = side.get("workers") or []
        if workers:
            kernels = ", ".join(Path(k).name for k in workers[0].get("kernels", [])) or "none"
            console.print(
                f"{label}: dimbench from {workers[0].get('dimbench_file')} (kernel: {kernels})",
                highlight=False,
                markup=False,
            )
    if result.calibration_ratio is not None:
        console.print(
            f"calibration kernels: head/base time {result.calibration_ratio:.3f} "
            "(every ratio above is already divided by it)",
            highlight=False,
        )
    start, end = result.machine.get("load_avg_1m_start"), result.machine.get("load_avg_1m_end")
    if start is not None and end is not None:
        # cache and memory contention slows memory-bound kernels more than the calibration
        console.print(
            f"load average: {start:.1f} at the start, {end:.1f} at the end", highlight=False
        )
    style = {"regression": "bold red", "error": "bold red", "pass": "green"}.get(
        result.status, "cyan"
    )
    console.print(f"[{style}]{result.status}[/]: ", end="", highlight=False)
    console.print(result.message, highlight=False, markup=False)
    console.print(f"gate took {elapsed:.1f} s", highlight=False)


def _table(result):
    from rich.table import Table
    from rich.text import Text

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1e3:.3f}"

    base, head = result.base, result.head
    against = (
        f"base {base.get('label', '')} ({base.get('rev', '')})"
        if result.mode == "ab"
        else f"baseline {base.get('baseline', '')} ({base.get('label') or 'no commit'})"
        if result.mode == "baseline"
        else "recorded"
    )
    table = Table(
        title=Text(
            f"speed gate, {result.machine.get('machine_class', '')}: head {head.get('label', '')}"
            f" vs {against} (threshold {result.threshold:.0%}, alpha {result.alpha:g})"
        ),
        title_justify="left",
    )
    table.add_column("benchmark")
    table.add_column("base ms", justify="right")
    table.add_column("head ms", justify="right")
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
        table.add_row(
            Text(row.name),
            ms(row.base_s),
            ms(row.head_s),
            ratio,
            p,
            Text(row.verdict, style=VERDICT_STYLE.get(row.verdict, "")),
        )
    table.caption = (
        "ms: median per call; ratio: head / base of calibration-normalised medians; "
        "p: one-sided Mann-Whitney U (head slower); a / b: first run / re-run"
    )
    return table


def register(app: typer.Typer) -> None:
    app.command("regress", help=REGRESS_HELP)(regress)
