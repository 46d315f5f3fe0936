"""Runs a sweep: one CSV row per configuration as it finishes, a live progress display and a
summary table at the end. A suite with a stepper (throughput) measures the models of each cell
in interleaved rounds, one worker process per model (``bench.cell``; then ``OUT/ratios.csv``,
``bench.ratios``); otherwise, and with ``--unpaired``, one process per configuration with a
timeout.

An out-of-memory error, a timeout or a crash becomes a row with that status and the sweep goes
on. Configurations whose rows are already in the results folder are skipped (see
``ResultStore.done_keys``), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dimbench.bench.cell import cells, measure_cell, wide_interval
from dimbench.bench.processes import classify_death, last_line, stderr_tail, worker_environment
from dimbench.bench.ratios import write_ratios
from dimbench.bench.registry import get_suite
from dimbench.bench.spec import Config, Suite, Sweep, fmt, params_m
from dimbench.errors import Interrupted, terminate_as_interrupt
from dimbench.pool import Slot, run_units
from dimbench.registry import KERNELS, get_model
from dimbench.results import ResultStore, key_part, row_key

WORKER = "dimbench.bench.worker"
# statuses of a configuration the machine could not run (yellow), unlike a crash (red)
OUT_OF_RESOURCES = ("oom", "timeout", "too_big")


def run_isolated(
    cfg: Config,
    suite: Suite | None = None,
    env: dict[str, str] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Run ``cfg`` in a fresh ``python -m dimbench.bench.worker`` process (``env`` added to its
    environment: a pool slot's); always returns a result dict (status ok / oom / timeout /
    error). ``stop`` set: the process is killed (a pool interrupted in another thread)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dimbench-") as tmp:
        cfg_path, out_path, err_path = (Path(tmp) / n for n in ("cfg.json", "out.json", "err"))
        cfg_path.write_text(json.dumps(cfg.to_dict()))
        with err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER, str(cfg_path), str(out_path)],
                env=worker_environment(cfg, suite, env),
                # never the caller's folder: a source checkout's dimbench/ there would shadow
                # the installed package (python -m puts the working directory first on the path)
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
            try:
                timed_out = not _wait(proc, cfg.timeout_s, stop)
            finally:  # also on Ctrl-C / SIGTERM: never leave a worker running
                if proc.poll() is None:
                    _kill_group(proc)
        wall = time.perf_counter() - t0
        if out_path.exists():
            result = json.loads(out_path.read_text())
        elif timed_out:
            result = {"status": "timeout", "error": f"no result after {cfg.timeout_s:g} s"}
        else:
            status, error = classify_death(proc.returncode, last_line(err_path))
            result = {"status": status, "error": error}
        if result.get("status") == "error":
            result["stderr"] = stderr_tail(err_path)
    result["wall_s"] = wall
    return result


def _wait(proc: subprocess.Popen, timeout: float, stop: threading.Event | None) -> bool:
    """Whether ``proc`` ended within ``timeout`` seconds (False also once ``stop`` is set)."""
    if stop is None:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if stop.is_set() or time.monotonic() >= deadline:
            return False
        stop.wait(0.05)
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_inline(cfg: Config, suite: Suite) -> dict:
    """Run an instant, allocation-free measurement (FLOP counting) in this process."""
    from dimbench.bench.worker import one_line
    from dimbench.measure.metadata import run_metadata

    t0 = time.perf_counter()
    result: dict = {"status": "ok", "error": None, "metrics": {}, "raw": None}
    try:
        result.update(suite.measure(cfg))
    except Exception as exc:
        result.update(status="error", error=one_line(exc))
    result["meta"] = run_metadata(cfg.device)
    result["wall_s"] = time.perf_counter() - t0
    return result


def result_row(cfg: Config, result: dict) -> dict:
    """The CSV row for ``cfg`` (in its suite's schema) from a worker's result (or from its
    death)."""
    from dimbench.measure.metadata import run_metadata

    meta = result.get("meta")
    if not meta:  # the worker died: describe the process it was meant to be
        meta = run_metadata(cfg.device)
        meta["threads"] = cfg.threads or meta["threads"]
        meta["omp_wait_policy"] = (cfg.omp_wait_policy or meta["omp_wait_policy"]).upper()
    try:
        spec = get_model(cfg.model)
        family, tokens, params = spec.family_id, spec.tokens(cfg.image_size), params_m(cfg.model)
    except Exception:
        family, tokens, params = None, None, None
    metrics = dict(result.get("metrics") or {})
    metrics.setdefault("params_m", params)
    return get_suite(cfg.suite).schema.row(
        **cfg.key_fields(),
        family=family,
        tokens=tokens,
        status=result.get("status", "error"),
        error=result.get("error"),
        wall_s=result.get("wall_s"),
        slot=result.get("slot") or None,
        timestamp=result.get("timestamp"),
        **metrics,
        **meta,
    )


def result_rows(cfg: Config, result: dict) -> list[dict]:
    """The CSV rows of one configuration: one, or one per entry of ``result["rows"]`` (a
    suite that writes several rows per configuration), all with one timestamp."""
    from dimbench.results import utc_timestamp

    many = result.get("rows") if result.get("status", "error") == "ok" else None
    if not many:
        return [result_row(cfg, result)]
    stamp = utc_timestamp()
    return [result_row(cfg, {**result, "metrics": m, "timestamp": stamp}) for m in many]


def append_result(store: ResultStore, cfg: Config, result: dict) -> list[dict]:
    """Append the rows of ``cfg``'s result (its raw samples with the first; a crash's stderr to
    the errors log); returns the rows."""
    rows = result_rows(cfg, result)
    for i, row in enumerate(rows):
        store.append(row, raw=result.get("raw") if i == 0 else None)
    if result.get("stderr"):
        _log_error(store, cfg, result["stderr"])
    return rows


def run_sweep(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    retry_failed: bool = True,
    redo: bool = False,
    console=None,
    show_progress: bool = True,
    slots: list[Slot] | None = None,
):
    """Measure every configuration of ``sweep`` not already in ``out_dir`` and return the
    sweep's rows (new and earlier) as a DataFrame; ``slots`` (``pool.placement``): measure as
    many at once, one on each [one on the sweep's device]."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = console or Console(stderr=True)
    store = ResultStore(out_dir, sweep.suite.schema)
    configs = sweep.configs()
    done = set()
    if not redo:
        done = store.done_keys(retry_failed=retry_failed, retry_too_big=not sweep.memory_check)
    todo = [c for c in configs if row_key(c.key_fields()) not in done]
    if len(todo) < len(configs):
        console.print(
            f"[dim]{len(configs) - len(todo)} of {len(configs)} configurations already in "
            f"{store.csv_path}; skipping them (--redo measures them again)[/dim]"
        )
    if sweep.memory_check and sweep.suite.isolated:  # what cannot fit is a row, not a run
        from dimbench.bench.memory_check import too_big

        refused = too_big(todo)
        for cfg, result in refused.items():
            row = result_row(cfg, result)
            store.append(row)
            console.print(_row_line(sweep.suite, row))
        todo = [c for c in todo if c not in refused]
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[suite]}[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    )
    if todo:
        console.print(
            f"{sweep.suite.name}: {len(todo)} configuration{'s' * (len(todo) > 1)} -> "
            f"{store.csv_path}"
        )
    paired = sweep.paired and bool(sweep.suite.stepper)
    units = cells(todo) if paired else [[c] for c in todo]
    kept = 0
    # an instant in-process count gains nothing from a pool (and shares this process's state)
    slots = list(slots or [Slot(sweep.device)]) if sweep.suite.isolated else [Slot(sweep.device)]
    stop = threading.Event()

    def measure(unit: list[Config], slot: Slot) -> tuple[dict[Config, dict], float | None]:
        """A unit's results on ``slot``: a lone configuration in its own process (or inline, a
        count), a cell's models in interleaved rounds, their workers all on that slot."""
        if len(unit) == 1:  # a cell of one model has nothing to pair with
            cfg = unit[0]
            progress.update(task, description=cfg.label())
            if not sweep.suite.isolated:
                return {cfg: run_inline(cfg, sweep.suite)}, None
            result = run_isolated(cfg, sweep.suite, slot.env(), stop)
            return {cfg: {**result, "slot": slot.label()}}, None
        label = cell_label(unit)
        progress.update(task, description=f"{label}  starting")

        def on_round(r: int, most: int, width: float) -> None:
            progress.update(task, description=f"{label}  round {r}/{most}, widest ±{width:.0%}")

        run = measure_cell(unit, sweep.suite, on_round, env=slot.env(), stop=stop)
        return {c: {**res, "slot": slot.label()} for c, res in run.results.items()}, run.load_avg_1m

    def record(unit: list[Config], measured: tuple[dict[Config, dict], float | None]) -> None:
        nonlocal kept
        results, load = measured
        firsts = []
        for cfg, result in results.items():
            if "paired" in sweep.suite.columns:
                result["metrics"] = {
                    **(result.get("metrics") or {}),
                    "paired": "true" if len(unit) > 1 else "false",
                }
            rows = append_result(store, cfg, result)
            kept += 1
            console.print(_row_line(sweep.suite, rows[0]))
            firsts.append(rows[0])
            progress.advance(task)
        _warn_wide(console, firsts, load)

    try:
        with progress, terminate_as_interrupt() as received:
            first = todo[0].label() if todo else ""
            task = progress.add_task(first, total=len(todo), suite=sweep.suite.name)
            run_units(units, slots, measure, record, stop)
    except KeyboardInterrupt:
        raise Interrupted(
            f"{kept} of {len(todo)} configuration{'s' * (len(todo) != 1)} measured and kept in "
            f"{store.csv_path}; the same command measures the rest",
            received.signum,
        ) from None
    if sweep.suite.ratio is not None and sweep.suite.stepper:
        write_ratios(store)
    keys = {row_key(c.key_fields()) for c in configs}
    df = store.frame()
    if df.empty:
        return df
    mask = [row_key(r) in keys for r in df.to_dict("records")]
    return df.loc[mask].reset_index(drop=True)


def cell_label(cfgs: list[Config]) -> str:
    c = cfgs[0]
    models = " ".join(x.model for x in cfgs)
    return f"{models} @ {c.image_size}px  b{c.batch_size} {c.dtype} {c.mode}"


def _warn_wide(console, rows: list[dict], load: float | None) -> None:
    """One line for a cell whose ok rows' intervals are wider than CI_TARGET, naming the load
    average during it (the cell's rounds; a lone configuration's: at its start)."""
    from dimbench.measure.intervals import CI_TARGET

    wide = [(r, w) for r in rows if r.get("status") == "ok" and (w := wide_interval(r))]
    if not wide:
        return
    if load is None:
        load = wide[0][0].get("load_avg_1m")
    said = f"load average {float(load):.1f}" if load not in (None, "") else "load unknown"
    r0 = wide[0][0]
    which = ", ".join(f"{r['model']} ±{w:.0%} (n={r.get('repeats')})" for r, w in wide)
    console.print(
        f"[yellow]{r0['image_size']}px b{r0['batch_size']} {r0['dtype']} {r0['mode']}: 95% "
        f"interval wider than ±{CI_TARGET:.0%}: {which}; {said} on {os.cpu_count() or 1} "
        "cores during it[/yellow]",
        highlight=False,
    )


def errors_log(store: ResultStore) -> Path:
    """Where the stderr of workers that ended in error goes: ``OUT/<suite>.errors.log``."""
    return store.out_dir / f"{store.suite}.errors.log"


def _log_error(store: ResultStore, cfg: Config, stderr: str) -> None:
    from dimbench.results import utc_timestamp

    with errors_log(store).open("a") as f:
        f.write(f"=== {utc_timestamp()} {cfg.label()}\n{stderr.rstrip()}\n")


def _row_line(suite: Suite, row: dict) -> str:
    head = f"{row['model']:>10} {row['image_size']:>5}px b{row['batch_size']} {row['dtype']}"
    status = row["status"]
    if status != "ok":
        colour = "yellow" if status in OUT_OF_RESOURCES else "red"
        return f"{head}  [{colour}]{status}[/{colour}] {row.get('error') or ''}"
    return f"{head}  {suite.row_line(row)}"


def _backends(row: dict) -> str:
    """The backends a row ran, e.g. "scan cpu, conv torch" ("-" for none)."""
    used = [
        f"{kernel} {row[column]}"
        for kernel, column in KERNELS.items()
        if str(row.get(column)) not in ("-", "", "None", "nan")
    ]
    return ", ".join(used) or "-"


def summary_table(suite: Suite, df):
    """A rich Table of a sweep's rows; key columns that are the same in every row move to the
    caption."""
    from rich.table import Table

    records = df.to_dict("records")
    for r in records:
        r["backend"] = _backends(r)
    keys = [("model", "model"), ("image_size", "res"), ("batch_size", "batch"), ("dtype", "dtype")]
    keys += [("mode", "mode"), ("backend", "backend")]
    varying = [(k, label) for k, label in keys if len({str(r[k]) for r in records}) > 1]
    fixed = [f"{label} {records[0][k]}" for k, label in keys if (k, label) not in varying]
    if records and ("model", "model") not in varying:
        varying.insert(0, ("model", "model"))
        fixed = [f for f in fixed if not f.startswith("model ")]
    caption = ", ".join(fixed) if records and fixed else None
    table = Table(title=f"dimbench {suite.name}", title_justify="left", caption=caption)
    for k, label in varying:
        table.add_column(label, justify="right" if k in ("image_size", "batch_size") else "left")
    steps = {key_part(r.get("sample_steps")) for r in records} - {""}
    sample_steps = steps.pop() if len(steps) == 1 else "N"
    for col in suite.summary:
        table.add_column(col.title.format(sample_steps=sample_steps), justify="right")
    table.add_column("status")
    for r in records:
        cells = [fmt(r.get(col.column), col.fmt) for col in suite.summary]
        status = r["status"]
        style = "green" if status == "ok" else "yellow" if status in OUT_OF_RESOURCES else "red"
        table.add_row(*(str(r[k]) for k, _ in varying), *cells, f"[{style}]{status}[/{style}]")
    return table
