"""Paired measurement: the models of one cell (same resolution, batch, dtype, mode, device and
settings; only the model differs) measured in interleaved rounds, as the speed gate measures its
sides (``dimbench.measure.rounds``).

Each model gets a long-lived worker (``python -m dimbench.bench.worker --serve``, driven over
pipes by ``measure.pipes``), so isolation stays: an OOM, a timeout or a crash in one model's
process ends that model's row with that status, and the others go on. The workers build and warm
up one after another (a build never overlaps another's warm-up); then every round runs one timed
step of each live model, in a freshly shuffled order, so load that comes and goes lands on all
models of the cell alike. The rounds stop by the same rule a lone configuration uses
(``StopRule``: at least ``min_rounds``, at most ``repeats``, in between once the budget is spent
and every model's interval is within ``CI_TARGET``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dimbench.bench.processes import classify_death, last_line, stderr_tail, worker_environment
from dimbench.bench.spec import NO_BACKEND, Config, Suite
from dimbench.measure.intervals import CI_TARGET, half_width
from dimbench.measure.pipes import PipeWorker, WorkerError, WorkerTimeout
from dimbench.measure.rounds import StopRule, interleave, widest

WORKER = "dimbench.bench.worker"
# (rounds done, rounds at most, widest relative half-width so far)
RoundProgress = Callable[[int, int, float], None]


def cell_key(cfg: Config) -> Config:
    """What the configurations of one cell share: everything but the model (and the backends
    resolved for it, which differ by family under the same request)."""
    return replace(
        cfg, model="", scan_backend=NO_BACKEND, attn_backend=NO_BACKEND, conv_backend=NO_BACKEND
    )


def cells(configs: list[Config]) -> list[list[Config]]:
    """``configs`` grouped into cells, in the order of each cell's first configuration."""
    out: dict[Config, list[Config]] = {}
    for cfg in configs:
        out.setdefault(cell_key(cfg), []).append(cfg)
    return list(out.values())


class StepFailed(WorkerError):
    """A model's step raised in its worker (an OOM, an error); the worker itself is fine."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


class CellWorker(PipeWorker):
    """One model's worker in a cell: its stepper built and warmed up, one timed step per
    ``time`` request (``measure.rounds.Timed``)."""

    def __init__(
        self, cfg: Config, suite: Suite, work_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        name = cfg.model.replace("/", "_")
        super().__init__(work_dir / f"{name}-{id(self):x}.err", f"the {cfg.model} worker")
        self.cfg, self.suite, self.work_dir = cfg, suite, work_dir
        self.slot_env = dict(env or {})  # a pool slot's (pinned cores, a GPU)
        self.samples: list[float] = []
        self.ready = False
        self.t0 = time.perf_counter()

    def launch(self) -> None:
        env = worker_environment(self.cfg, self.suite, self.slot_env)
        self.t0 = time.perf_counter()
        # never the caller's folder: a source checkout's dimbench/ there would shadow the
        # installed package (python -m puts the working directory first on the path)
        self.start([sys.executable, "-m", WORKER, "--serve"], env, self.work_dir)

    def set_up(self) -> None:
        """Build and warm up (within the configuration's timeout)."""
        reply = self.request({"op": "setup", "config": self.cfg.to_dict()}, self.cfg.timeout_s)
        if "failed" in reply:
            raise StepFailed(**reply["failed"])
        self.ready = True

    @property
    def names(self) -> list[str]:
        return [self.cfg.model] if self.ready else []

    def time(self, names) -> dict[str, float]:
        reply = self.request({"op": "time"}, self.cfg.timeout_s)
        if "failed" in reply:
            raise StepFailed(**reply["failed"])
        self.samples.append(reply["seconds"])
        return {self.cfg.model: reply["seconds"]}

    def finish(self) -> dict:
        return self.request({"op": "finish"}, self.cfg.timeout_s)["result"]

    def result_of(self, error: Exception) -> dict:
        """The result dict (as ``run_isolated`` gives) of a worker that failed with ``error``."""
        if isinstance(error, StepFailed):
            result = {"status": error.status, "error": error.error}
        elif isinstance(error, WorkerTimeout):
            result = {"status": "timeout", "error": f"no result after {self.cfg.timeout_s:g} s"}
        else:
            if self.proc is not None and self.proc.poll() is None:
                self.kill()
            code = self.proc.returncode if self.proc is not None else 1
            status, text = classify_death(code, last_line(self.log_path))
            result = {"status": status, "error": text}
        if result["status"] == "error":
            result["stderr"] = stderr_tail(self.log_path)
        return result


@dataclass
class CellRun:
    """What a cell's rounds gave: a result per configuration, and how the rounds went."""

    results: dict[Config, dict]
    rounds: int
    load_avg_1m: float | None  # the mean 1-minute load average over the rounds


def measure_cell(
    cfgs: list[Config],
    suite: Suite,
    on_round: RoundProgress | None = None,
    env: dict[str, str] | None = None,
    stop: threading.Event | None = None,
) -> CellRun:
    """Measure the configurations of one cell in interleaved rounds; every configuration gets
    a result (status ok / oom / timeout / error), the ok ones with their samples in round order
    and the cell's id in ``raw["cell"]``. ``env``: added to every worker's environment (a pool
    slot's, so the whole cell runs on one device); ``stop`` set (a pool interrupted in another
    thread): the workers are killed at the next round and KeyboardInterrupt raised."""
    first = cfgs[0]
    rule = StopRule(first.min_rounds, first.repeats, first.budget_s)
    seed = zlib.crc32(repr(cell_key(first)).encode())
    results: dict[Config, dict] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dimbench-cell-") as tmp:
        workers = [CellWorker(cfg, suite, Path(tmp), env) for cfg in cfgs]
        try:
            for w in workers:  # one at a time: no build runs beside another's warm-up
                _check(stop)
                try:
                    w.launch()
                    w.set_up()
                except (WorkerError, OSError) as e:
                    results[w.cfg] = w.result_of(e)
                    w.close()
            live = [w for w in workers if w.ready]
            failed: dict[int, Exception] = {}

            def round_done(r: int) -> None:
                _check(stop)
                loads.append(os.getloadavg()[0])
                if on_round is not None:
                    going = [w for i, w in enumerate(live) if i not in failed]
                    on_round(r, rule.max_rounds, widest([{"": w.samples} for w in going]))

            rounds = 0
            if live:
                samples = interleave(
                    live, rule.max_rounds, seed, round_done, stop=rule, failed=failed
                )
                rounds = max(len(v) for s in samples for v in s.values())
            cell = {
                "id": uuid.uuid4().hex[:12],
                "models": [c.model for c in cfgs],
                "rounds": rounds,
                "load_avg_1m": statistics.fmean(loads) if loads else None,
            }
            for i, w in enumerate(live):
                error = failed.get(i)
                if error is None:
                    try:
                        result = w.finish()
                    except WorkerError as e:
                        error = e
                if error is not None:
                    results[w.cfg] = w.result_of(error)
                    continue
                result.setdefault("raw", {})["cell"] = cell
                results[w.cfg] = result
        except BaseException:  # Ctrl-C / SIGTERM: no worker finishes its step first
            for w in workers:
                w.kill()
            raise
        finally:  # never leave a worker running
            for w in workers:
                w.close()
            wall = time.perf_counter()
            for w in workers:
                results.get(w.cfg, {}).setdefault("wall_s", wall - w.t0)
    ordered = {cfg: results[cfg] for cfg in cfgs if cfg in results}
    return CellRun(ordered, rounds, cell["load_avg_1m"])


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt("the sweep was interrupted")


def wide_interval(row: dict, target: float = CI_TARGET) -> float | None:
    """The relative half-width of an ok row's images/s interval when wider than ``target``."""
    try:
        lo, hi = float(row["imgs_per_s_ci_lo"]), float(row["imgs_per_s_ci_hi"])
        centre = float(row["imgs_per_s"])
    except (KeyError, TypeError, ValueError):
        return None
    width = half_width(lo, hi, centre)
    return width if width > target else None
