"""The gate's sides: one long-lived worker process per source tree, driven over pipes.

``Side`` starts ``python -c BOOTSTRAP worker.py ROOT`` in the gate's temporary folder: the
interpreter is this one (same torch, same site-packages), the ``dimbench`` is ROOT's (see
``worker.py``). Its stderr goes to a log file whose tail is quoted when the worker fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

WORKER_FILE = Path(__file__).with_name("worker.py")
# Loads worker.py by its path (not as dimbench.regress.worker: the side's dimbench is imported
# later, from the side's tree) and hands it the tree.
BOOTSTRAP = (
    "import importlib.util as u, sys; "
    "s = u.spec_from_file_location('dimbench_gate_worker', sys.argv[1]); "
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
    "m.main(sys.argv[2:])"
)
LOG_TAIL_LINES = 12


class WorkerError(RuntimeError):
    """A side's worker failed: it could not import its dimbench, or a request raised."""


class Side:
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
        self.proc: subprocess.Popen | None = None
        self.log_path = work_dir / f"{label}-{id(self):x}.log"
        self.info: dict = {}  # where its dimbench came from (worker.import_side)
        self.setup: dict = {}  # the worker's setup reply: cases, calibration, errors, kernels

    # ------------------------------------------------------------------ process

    def start(self) -> None:
        env = {**os.environ, **self.env}
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # an idle OpenMP thread must not spin
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, str(WORKER_FILE), str(self.root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=self.work_dir,  # nothing importable here: the tree comes from ROOT alone
                env=env,
                text=True,
                bufsize=1,
            )

    def send(self, doc: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(doc) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure("exited") from None

    def receive(self) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise self._failure(f"exited with code {self.proc.returncode}")
        doc = json.loads(line)
        if "error" in doc:
            raise self._failure(doc["error"])
        return doc

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.poll() is None:
                self.send({"op": "exit"})
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def _failure(self, what: str) -> WorkerError:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            tail = []
        log = ("\n  " + "\n  ".join(tail)) if tail else ""
        return WorkerError(f"the {self.label} worker ({self.root}): {what}{log}")

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
        self.send({"op": "time", "names": list(names)})
        return self.receive()["times"]


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
