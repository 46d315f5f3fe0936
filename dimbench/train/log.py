"""What a training run reports as it goes: ``log.csv`` (one row every ``log_every`` steps)
and a progress bar on the terminal."""

from __future__ import annotations

import csv
import math
from pathlib import Path

LOG_NAME = "log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "wall_time", "images_seen", "flops", "grad_norm")


class TrainLog:
    """``log.csv``, appended row by row; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        rows = []
        if path.exists() and resume_step > 0:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TrainProgress:
    """A rich progress bar with loss, steps/s and ETA (a no-op when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.2f} steps/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=done, loss=math.nan, rate=0.0)

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)
