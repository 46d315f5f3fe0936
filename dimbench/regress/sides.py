"""The gate's sides: one long-lived worker process per source tree, driven over pipes
(``dimbench.measure.pipes.PipeWorker``).

``Side`` starts ``python -c BOOTSTRAP worker.py ROOT`` in the gate's temporary folder: the
interpreter is this one (same torch, same site-packages), the ``dimbench`` is ROOT's (see
``worker.py``). Its stderr goes to a log file whose tail is quoted when the worker fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from dimbench.measure.pipes import PipeWorker, WorkerError

__all__ = ["Side", "WorkerError", "running"]

WORKER_FILE = Path(__file__).with_name("worker.py")
# Loads worker.py by its path (not as dimbench.regress.worker: the side's dimbench is imported
# later, from the side's tree) and hands it the tree.
BOOTSTRAP = (
    "import importlib.util as u, sys; "
    "s = u.spec_from_file_location('dimbench_gate_worker', sys.argv[1]); "
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
    "m.main(sys.argv[2:])"
)


class Side(PipeWorker):
    """One side of the comparison (``label`` "base" or "head"): a worker importing the dimbench of
    ``root``, which sets up the cases of ``cases_file`` and times them on request."""

    def __init__(
        self,
        label: str,
        root: Path,
        cases_file: Path,
        work_dir: Path,
        device: str = "cpu",
        threads: int = 1,
        warmup: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.label, self.root, self.cases_file = label, Path(root), Path(cases_file)
        self.env = dict(env or {})  # set in this side's worker only (on top of the gate's own)
        self.work_dir, self.device, self.threads, self.warmup = work_dir, device, threads, warmup
        super().__init__(
            work_dir / f"{label}-{id(self):x}.log",
            f"the {label} worker ({self.root})",
            new_session=False,
        )
        self.info: dict = {}  # where its dimbench came from (worker.import_side)
        self.setup: dict = {}  # the worker's setup reply: cases, calibration, errors, kernels

    # ------------------------------------------------------------------ process

    def start(self) -> None:  # type: ignore[override]
        env = {**os.environ, **self.env}
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # an idle OpenMP thread must not spin
        # nothing importable in work_dir: the tree comes from ROOT alone
        argv = [sys.executable, "-c", BOOTSTRAP, str(WORKER_FILE), str(self.root)]
        super().start(argv, env, self.work_dir)

    # ------------------------------------------------------------------ requests

    def request_setup(self) -> None:
        self.send(
            {
                "op": "setup",
                "cases_file": str(self.cases_file),
                "device": self.device,
                "threads": self.threads,
                "warmup": self.warmup,
            }
        )

    @property
    def names(self) -> list[str]:
        """The cases and calibration kernels this side could set up."""
        errors = self.setup.get("errors", {})
        everything = [*self.setup.get("cases", []), *self.setup.get("calibration", [])]
        return [c["name"] for c in everything if c["name"] not in errors]

    def time(self, names: Sequence[str]) -> dict[str, float]:
        """One sample (seconds per call) of each case in ``names``, in that order."""
        return self.request({"op": "time", "names": list(names)})["times"]


@contextlib.contextmanager
def running(sides: Sequence[Side]) -> Iterator[Sequence[Side]]:
    """Start every side's worker and set its cases up, all at once (imports and kernel builds
    overlap); close them all on the way out, also on an error or Ctrl-C."""
    try:
        for side in sides:
            side.start()
        for side in sides:
            side.info = side.receive()["info"]
            side.request_setup()
        for side in sides:
            side.setup = side.receive()
        yield sides
    finally:
        for side in sides:
            side.close()
