"""``train-compare --devices cuda:0 cuda:1`` (or ``--workers N`` on a CPU): the models of a
comparison train at once, one per slot (``dimbench.pool``), each in a process of its own:
``python -m dimbench.train.compare.child CONFIG.pkl LABEL``.

The parent plans the comparison (sizes, evaluation points, held-out set, FID reference
statistics in the cache), records it and holds ``--out``'s lock; each child builds the same
plan from the same resolved configuration and trains one model, every seed, appending its rows
to the shared CSV (``store.append_row`` locks it). The settings are the parent's for every
model; only the device (a slot's GPU, or its cores and thread count) differs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from dimbench.errors import UsageError
from dimbench.pool import Slot, run_units


class Comparison(Protocol):
    """What the slots need of a ``CompareRun`` (not imported: run imports this module)."""

    cfg: Any
    specs: list


STDERR_TAIL = 3000


def train_on_slots(comp: Comparison, slots: list[Slot]) -> None:
    """Train each model of ``comp`` on a slot of its own, as many at once as there are slots;
    a model whose process fails is a UsageError naming it, once the others are done."""
    failed: list[str] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="dimbench-compare-") as tmp:
        cfg_path = Path(tmp) / "config.pkl"
        cfg_path.write_bytes(pickle.dumps(comp.cfg))

        def train(label: str, slot: Slot) -> tuple[int, str]:
            return _child(cfg_path, label, slot, stop, Path(tmp))

        def done(label: str, result: tuple[int, str]) -> None:
            code, tail = result
            if code:
                failed.append(f"{label} (exit {code}): {tail}")

        run_units([s.label for s in comp.specs], slots, train, done, stop)
    if failed:
        raise UsageError(f"train-compare: {'; '.join(failed)}")


def _child(cfg_path: Path, label: str, slot: Slot, stop: threading.Event, tmp: Path):
    env = {**os.environ, **slot.env()}
    err_path = tmp / f"{label.replace('/', '_')}.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dimbench.train.compare.child", str(cfg_path), label,
             os.getcwd()],
            env=env, cwd=tmp, stdin=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            while proc.poll() is None and not stop.wait(0.2):
                pass
        finally:  # Ctrl-C in the parent: the child saves its checkpoint on SIGTERM
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    lines = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    return proc.returncode, (lines[-1] if lines else "")[-STDERR_TAIL:]
