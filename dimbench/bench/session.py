"""A sweep as the commands run it (``dimbench run``, ``dimbench profile``): the device resolved,
the suite's default models for it, the results folder checked, the rows measured into it, the
summary printed, and the configurations that crashed counted (the command exits 1 then)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dimbench.bench.spec import DEFAULT_RESOLUTIONS, Sweep, run_timing
from dimbench.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from dimbench.results import ResultStore

TIMING_FIELDS = ("warmup", "min_rounds", "repeats", "budget_s")


def default_out(device: str) -> Path:
    """Where a run's rows go unless --out says: ``runs/<machine>/``, apart from the project's
    published results in ``results/``, so a first run measures instead of resuming them."""
    from dimbench.measure.metadata import machine_slug

    return Path("runs") / machine_slug(device)


def suite_models(suite, device: str, models: list[str] | None) -> list[str]:
    """``models``, else the suite's defaults for ``device`` that are registered here (the
    others are named on stderr; none at all is a UsageError)."""
    if models:
        return list(models)
    from dimbench.registry import list_models

    chosen = list(suite.default_models(device))
    registered = set(list_models())
    missing = [m for m in chosen if m not in registered]
    chosen = [m for m in chosen if m in registered]
    if not chosen:
        raise UsageError(
            f"none of the default models ({', '.join(missing)}) is registered; "
            "name some with --models"
        )
    if missing:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]not registered, skipped: {', '.join(missing)}")
    return chosen


def plan(
    suite_name: str,
    models: list[str] | None,
    resolutions: list[int] | None,
    device: str,
    on_device: bool = True,
    **settings,
) -> Sweep:
    """The validated sweep of ``suite_name`` on ``device`` (``auto`` resolved): ``models`` or
    the suite's defaults there, ``resolutions`` or DEFAULT_RESOLUTIONS, and ``settings``
    (Sweep fields; warmup, repeats and budget_s None: RUN_TIMING for the device; no
    omp_wait_policy: the one in effect). ``on_device`` False: ``device`` (cpu or cuda) is
    where cluster tasks run, not checked here (``Sweep.on_device``)."""
    from dimbench.bench.registry import get_suite
    from dimbench.devices import parse_device
    from dimbench.threads import omp_policy_in_effect

    suite = get_suite(suite_name)
    device = parse_device(device, allow_auto=True) if on_device else device
    timing = {k: settings.pop(k) for k in TIMING_FIELDS if k in settings}
    settings.update(run_timing(device, **timing))
    if not settings.get("omp_wait_policy"):
        settings["omp_wait_policy"] = omp_policy_in_effect().lower() or None
    sweep = Sweep(
        suite=suite,
        models=suite_models(suite, device, models),
        resolutions=list(resolutions) if resolutions else list(DEFAULT_RESOLUTIONS),
        device=device,
        on_device=on_device,
        **settings,
    )
    return sweep.validate()


@contextmanager
def results_store(sweep: Sweep, out: Path | None) -> Iterator[ResultStore]:
    """The sweep's result CSV in ``out`` (default_out otherwise), checked writable, not in use
    by another command and ours before anything runs; the folder stays locked (``OutLock``)
    until the block ends."""
    from dimbench.out_lock import OutLock
    from dimbench.paths import writable_dir
    from dimbench.results import ResultStore

    out_dir = writable_dir(out if out is not None else default_out(sweep.device))
    with OutLock(out_dir):
        store = ResultStore(out_dir, sweep.suite.schema)
        store.check()
        yield store


def result_console() -> Console:
    """stdout; on a log file wide enough for the whole table."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def run(
    sweep: Sweep,
    out: Path | None,
    *,
    redo: bool,
    retry_failed: bool,
    slots: list | None = None,
    summarise: Callable[[pd.DataFrame, Path], list[str]] | None = None,
) -> int:
    """``dimbench run``: measure what is not in ``out`` yet (on ``slots``, ``pool.placement``'s,
    at once), print the summary table (and ``summarise``'s lines of the rows and the folder);
    returns how many configurations crashed."""
    from dimbench.bench.runner import run_sweep

    with results_store(sweep, out) as store:
        df = run_sweep(sweep, store.out_dir, retry_failed=retry_failed, redo=redo, slots=slots)
    return print_summary(sweep, store, df, summarise)


def print_summary(
    sweep: Sweep,
    store: ResultStore,
    df: pd.DataFrame,
    summarise: Callable[[pd.DataFrame, Path], list[str]] | None = None,
) -> int:
    """Print the summary table of the sweep's rows (and ``summarise``'s lines); returns how
    many crashed."""
    from dimbench.bench.ratios import RATIOS_FILE
    from dimbench.bench.runner import summary_table

    console = result_console()
    console.print(summary_table(sweep.suite, df))
    for line in summarise(df, store.out_dir) if summarise is not None else []:
        console.print(line, highlight=False, markup=False)
    console.print(f"rows in {store.csv_path}")
    if (store.out_dir / RATIOS_FILE).exists() and sweep.suite.stepper:
        console.print(f"ratios with 95% intervals in {store.out_dir / RATIOS_FILE}")
    return report_errors(df, store, console)


def with_options(sweep: Sweep, **options: str | None) -> Sweep:
    """The sweep with these suite options (``Config.suite_options``; None: not given)."""
    given = {k: v for k, v in options.items() if v is not None}
    return replace(sweep, suite_options={**sweep.suite_options, **given})


def report_errors(df: pd.DataFrame, store: ResultStore, console: Console) -> int:
    """How many configurations of the sweep crashed, saying where their tracebacks are."""
    from dimbench.bench.runner import errors_log

    errors = int((df["status"] == "error").sum()) if len(df) else 0
    if errors:
        console.print(
            f"[red]{errors} configuration{'s' * (errors > 1)} ended in error[/red] (a crash, "
            f"unlike oom and timeout): the error column of {store.csv_path} says why, the "
            f"workers' tracebacks are in {errors_log(store)}",
            highlight=False,
        )
    return errors
