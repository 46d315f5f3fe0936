"""train-compare's terminal output: the plan, one progress bar per model, one line per
evaluation point, and the end-of-budget table (rank 0 only; quiet elsewhere)."""

from __future__ import annotations

import torch


def make_console(enabled: bool):
    from rich.console import Console

    console = Console(quiet=not enabled, highlight=False)
    if not console.is_terminal:  # a log file: wide enough for the summary table
        console.width = 150
    return console


def print_plan(console, header: str, matching: list[str], notes: list[str]) -> None:
    console.print(header)
    for line in matching:
        console.print(f"  {line}")
    for note in notes:
        console.print(f"  note: {note}")


class CompareProgress:
    """One rich progress bar per model (steps, or training seconds under a time budget) with
    its step and latest training loss, and one printed line per evaluation point."""

    def __init__(self, console, enabled: bool, seconds: bool):
        self.console = console
        self.seconds = seconds
        self.bar = None
        self.tasks: dict[str, int] = {}
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%") if seconds else MofNCompleteColumn(),
            TextColumn("step {task.fields[step]:>6}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
        )

    def add(self, label: str, total: float, completed: float, step: int) -> None:
        """A bar for one model: ``total`` steps (or seconds), ``completed`` so far."""
        if self.bar is not None:
            self.tasks[label] = self.bar.add_task(
                label, total=total, completed=completed, step=step, loss="-"
            )

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, label: str, step: int, wall_time: float, loss: torch.Tensor | None) -> None:
        if self.bar is None:
            return
        fields = {"step": step}
        if loss is not None:
            fields["loss"] = f"{float(loss):.4f}"
        done = wall_time if self.seconds else step
        self.bar.update(self.tasks[label], completed=done, **fields)

    def report(self, row: dict, name: str) -> None:
        text = (
            f"{name:<26} point {row['point']:>2}  step {row['step']:>6}  "
            f"held-out {row['heldout_loss']:.4f} (raw {row['heldout_loss_raw']:.4f})"
        )
        if row.get("train_loss") is not None:
            text += f"  train {row['train_loss']:.4f}"
        if row.get("fid") is not None:
            text += f"  FID {row['fid']:.1f} (n={row['n_gen']}/{row['n_ref']})"
        if row.get("swd") is not None:
            text += f"  SWD {row['swd']:.1f}"
        text += f"  [{row['wall_seconds']:.0f}s train, eval {row['eval_seconds']:.0f}s]"
        self.console.print(text)


def print_summary_table(console, rows: list[dict]) -> None:
    """The numbers at the end of the budget, one line per model (rows as read from the CSV)."""
    from rich.table import Table

    last: dict[str, dict] = {}
    for r in rows:
        if r["label"] not in last or int(r["point"]) >= int(last[r["label"]]["point"]):
            last[r["label"]] = r
    fid_rows: dict[str, dict] = {}
    for r in rows:
        if r.get("fid"):
            fid_rows[r["label"]] = r
    table = Table(title="train-compare: end of the budget")
    for col in ("model", "params", "GFLOPs/img", "steps", "images", "train s", "train FLOPs",
                "train loss", "held-out (EMA)", "held-out (raw)", "FID (n)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, r in last.items():
        f = fid_rows.get(label)
        fid = f"{float(f['fid']):.1f} ({f['n_gen']}/{f['n_ref']})" if f else "-"
        table.add_row(
            label,
            f"{int(r['params']) / 1e6:.2f}M",
            f"{float(r['gflops_per_image']):.3g}",
            r["step"],
            r["images_seen"],
            f"{float(r['wall_seconds']):.0f}",
            f"{float(r['train_flops']):.3g}",
            f"{float(r['train_loss']):.4f}" if r.get("train_loss") else "-",
            f"{float(r['heldout_loss']):.4f}",
            f"{float(r['heldout_loss_raw']):.4f}",
            fid,
        )
    console.print(table)
