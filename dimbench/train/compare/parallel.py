"""``train-compare --devices cuda:0 cuda:1`` (or ``--workers N`` on a CPU): the models of a
comparison train at once, one (model, seed) run per slot (``dimbench.pool``), each in a process
of its own: ``python -m dimbench.train.compare.child CONFIG.pkl LABEL SEED CWD``.

The parent plans the comparison (sizes, evaluation points, held-out set, FID reference
statistics in the cache), records it and holds ``--out``'s lock; each child builds the same
plan from the same resolved configuration and trains one model under one seed, appending its rows
to the shared CSV (``store.append_row`` locks it). The settings are the parent's for every
model; only the device (a slot's GPU, or its cores and thread count) differs. A unit is one
run, not one model with every seed: with 3 models on 2 slots, whole models would leave one
slot idle while the other trains two models' seeds (a third longer on a 2-core CPU).
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
    seeds: list[int]


STDERR_TAIL = 3000


def train_on_slots(comp: Comparison, slots: list[Slot]) -> None:
    """Train every (model, seed) run of ``comp`` on a slot of its own, as many at once as there
    are slots (seed by seed, in the models' order); a run whose process fails is a UsageError
    naming it, once the others are done."""
    failed: list[str] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="dimbench-compare-") as tmp:
        cfg_path = Path(tmp) / "config.pkl"
        cfg_path.write_bytes(pickle.dumps(comp.cfg))

        def train(unit: tuple[str, int], slot: Slot) -> tuple[int, str]:
            return _child(cfg_path, unit, slot, stop, Path(tmp))

        def done(unit: tuple[str, int], result: tuple[int, str]) -> None:
            code, tail = result
            if code:
                failed.append(f"{unit[0]} seed {unit[1]} (exit {code}): {tail}")

        units = [(s.label, seed) for seed in comp.seeds for s in comp.specs]
        run_units(units, slots, train, done, stop)
    if failed:
        raise UsageError(f"train-compare: {'; '.join(failed)}")


def _child(
    cfg_path: Path, unit: tuple[str, int], slot: Slot, stop: threading.Event, tmp: Path
) -> tuple[int, str]:
    label, seed = unit
    env = {**os.environ, **slot.env()}
    err_path = tmp / f"{label.replace('/', '_')}-seed{seed}.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dimbench.train.compare.child", str(cfg_path), label,
             str(seed), os.getcwd()],
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
