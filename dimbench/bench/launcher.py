"""A sweep as cluster jobs: ``--launcher slurm`` submits one submitit job-array task per unit
(a configuration), ``--launcher local`` runs the same tasks through submitit's local executor
(no cluster: what CI tests). Every task appends its rows to the sweep's ``OUT/`` store, under
the store's lock; the submitting command waits for the tasks and records a task that died
(time limit, node failure) as a row, so a rerun resubmits it with whatever is still missing.

Planned on a login node, a sweep's device may not be there: a slurm sweep is planned without
resolving its device or backends (``Sweep.on_device`` False) and each task resolves them on its
node. ``pending`` matches such configurations against finished rows with their ``auto``
backends as wildcards. submitit is an optional extra: ``pip install 'dimbench[cluster]'``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dimbench.bench.spec import Config
from dimbench.errors import Interrupted, UsageError, terminate_as_interrupt
from dimbench.results import row_key

if TYPE_CHECKING:
    from dimbench.bench.spec import Sweep
    from dimbench.results import ResultStore

LAUNCHERS = ("local", "slurm")
SUBMITIT_FOLDER = "submitit"  # OUT/submitit/: submitit's pickles and each task's logs
AUTO = "auto"


@dataclass(frozen=True)
class ClusterOptions:
    """How a sweep's tasks are submitted: validated once (``cluster_options``), then carried."""

    launcher: str
    partition: str | None = None
    gpus_per_task: int = 0
    time_min: int = 60
    account: str | None = None
    # --slurm-arg: submitit's slurm parameters (array_parallelism, qos, mem, ...), others as
    # further #SBATCH --KEY=VALUE lines
    extra: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> dict:
        """The executor's ``update_parameters`` keywords."""
        params: dict = {"name": "dimbench", "timeout_min": self.time_min, "tasks_per_node": 1}
        if self.launcher == "slurm":
            params.update(slurm_gpus_per_task=self.gpus_per_task or None, nodes=1)
            params.update(slurm_partition=self.partition, slurm_account=self.account)
            known = _slurm_parameters()  # submitit's own (array_parallelism, qos, mem, ...)
            extra = {k: v for k, v in self.extra.items() if k not in known}
            params.update({f"slurm_{k}": _value(v) for k, v in self.extra.items() if k in known})
            if extra:
                params["slurm_additional_parameters"] = extra
        return {k: v for k, v in params.items() if v is not None}


def _slurm_parameters() -> set[str]:
    from submitit.slurm.slurm import SlurmExecutor

    return set(SlurmExecutor._valid_parameters()) - {"additional_parameters", "setup", "srun_args"}


def _value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def cluster_options(
    launcher: str,
    partition: str | None = None,
    gpus_per_task: int = 0,
    time: str = "60",
    account: str | None = None,
    args: list[str] | None = None,
) -> ClusterOptions:
    """The checked options (one-line UsageError otherwise); also checks submitit is there."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher!r}: valid: {', '.join(LAUNCHERS)}")
    require_submitit()
    if gpus_per_task < 0:
        raise UsageError("--slurm-gpus-per-task must be >= 0")
    extra = {}
    for arg in args or []:
        key, eq, value = arg.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key:
            raise UsageError(f"--slurm-arg {arg!r}: write KEY=VALUE, e.g. --slurm-arg qos=high")
        extra[key.replace("-", "_")] = value
    return ClusterOptions(
        launcher, partition, gpus_per_task, _minutes(time), account, extra
    )  # fmt: skip


def _minutes(text: str) -> int:
    """SLURM's --time forms (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole minutes,
    rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not m:
        raise UsageError(f"--slurm-time {text!r}: write minutes (90), H:MM:SS or D-HH:MM")
    parts = [int(p) for p in m.group(2).split(":")]
    if m.group(1) is not None:  # D-HH[:MM[:SS]]
        h, mm, ss = (parts + [0, 0])[:3]
        seconds = ((int(m.group(1)) * 24 + h) * 60 + mm) * 60 + ss
    else:  # MM, MM:SS, HH:MM:SS
        seconds = {1: lambda: parts[0] * 60, 2: lambda: parts[0] * 60 + parts[1]}.get(
            len(parts), lambda: (parts[0] * 60 + parts[1]) * 60 + parts[2]
        )()
    if seconds < 60:
        raise UsageError("--slurm-time must be at least a minute")
    return -(-seconds // 60)


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UsageError(
            "--launcher needs submitit: pip install 'dimbench[cluster]'"
        ) from None  # fmt: skip
    return submitit


@dataclass(frozen=True)
class Task:
    """One job-array task: a configuration (backends ``auto`` where its node resolves them)
    and where its rows go."""

    config: dict
    out_dir: str
    memory_check: bool
    retry_failed: bool = True


def run_task(task: Task) -> dict:
    """On the node: resolve, skip if any writer finished it, check it fits, measure it in a
    worker process, append its rows. Returns ``{"label", "status"}``."""
    from dimbench.bench.registry import get_suite
    from dimbench.bench.runner import append_result, run_isolated
    from dimbench.results import ResultStore

    cfg = resolve_here(Config.from_dict(task.config))
    suite = get_suite(cfg.suite)
    store = ResultStore(task.out_dir, suite.schema)
    done = store.done_keys(retry_failed=task.retry_failed, retry_too_big=not task.memory_check)
    if row_key(cfg.key_fields()) in done:
        return {"label": cfg.label(), "status": "skipped"}
    result = None
    if task.memory_check:
        from dimbench.bench.memory_check import too_big

        result = too_big([cfg]).get(cfg)
    if result is None:
        result = run_isolated(cfg, suite)
    result["slot"] = task_id()
    rows = append_result(store, cfg, result)
    return {"label": cfg.label(), "status": rows[0]["status"]}


def resolve_here(cfg: Config) -> Config:
    """``cfg`` with its device and backends resolved on this machine (a task's node)."""
    from dimbench.devices import parse_device
    from dimbench.ops.backends import resolve
    from dimbench.registry import KERNELS, get_model

    device = parse_device(cfg.device, allow_auto=True)
    backends = {
        KERNELS[k]: resolve(k, getattr(cfg, KERNELS[k]), device, cfg.dtype)
        for k in get_model(cfg.model).kernels
    }
    return replace(cfg, device=device, **backends)


def task_id() -> str:
    """``slurm 1234_5`` / ``local 4242``: the submitit job this task is."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return ""
    return f"{env.cluster} {env.job_id}"


def pending(configs: list[Config], done: set[tuple[str, ...]]) -> list[Config]:
    """The configurations without a finished row; a backend still ``auto`` matches any."""

    def matches(key: tuple[str, ...], finished: tuple[str, ...]) -> bool:
        return all(a == b or a == AUTO for a, b in zip(key, finished, strict=True))

    out = []
    for cfg in configs:
        key = row_key(cfg.key_fields())
        if key in done or (AUTO in key and any(matches(key, k) for k in done)):
            continue
        out.append(cfg)
    return out


def describe(opts: ClusterOptions, tasks: list[Task], out_dir: Path) -> str:
    """What ``--dry-run`` prints: the submission, its parameters and every task."""
    n = len(tasks)
    how = "1 job array of" if opts.launcher == "slurm" else "one after another,"
    lines = [
        f"{opts.launcher}: {how} {n} task{'s' * (n != 1)} (one configuration each)"
        + (f", logs in {out_dir / SUBMITIT_FOLDER}" if n else ""),
        "executor parameters: "
        + ", ".join(f"{k}={v}" for k, v in sorted(opts.parameters().items())),
    ]
    if opts.launcher == "slurm" and n:
        lines += ["sbatch script header:", *sbatch_header(opts, n, out_dir)]
    width = len(str(n - 1)) if n else 1
    for i, t in enumerate(tasks):
        lines.append(f"  [{i:>{width}}] {Config.from_dict(t.config).label()}")
    lines.append("nothing submitted (--dry-run)")
    return "\n".join(lines)


def sbatch_header(opts: ClusterOptions, n: int, out_dir: Path) -> list[str]:
    """The ``#SBATCH`` lines submitit would write for ``n`` tasks (its own renderer, which
    needs no cluster; AutoExecutor's generic names translated as it does)."""
    from submitit.slurm.slurm import _make_sbatch_string

    generic = {"timeout_min": "time", "name": "job_name", "tasks_per_node": "ntasks_per_node"}
    params = {}
    for k, v in opts.parameters().items():
        params[generic.get(k, k.removeprefix("slurm_"))] = v
    text = _make_sbatch_string(
        command="python -u -m submitit.core._submit ...",
        folder=str(out_dir / SUBMITIT_FOLDER / "%j"),
        map_count=n,
        **params,
    )
    return ["  " + ln for ln in text.splitlines() if ln.startswith("#SBATCH")]


def submit(
    opts: ClusterOptions,
    tasks: list[Task],
    out_dir: Path,
    on_done: Callable[[Task, dict | None, str | None], None],
) -> list:
    """Submit ``tasks`` and wait for them; ``on_done(task, result, death)`` for each as it ends
    (``death``: why a task ended without a result, e.g. ``timeout: ...``). The local executor
    runs them one at a time: tasks measuring at once on one machine would share its cores."""
    submitit = require_submitit()
    try:
        executor = submitit.AutoExecutor(out_dir / SUBMITIT_FOLDER / "%j", cluster=opts.launcher)
    except RuntimeError as e:  # no srun / sbatch on this machine
        raise UsageError(f"--launcher {opts.launcher}: {e}") from None
    executor.update_parameters(**opts.parameters())
    waves = [tasks] if opts.launcher == "slurm" else [[t] for t in tasks]
    jobs = []
    for wave in waves:
        batch = executor.map_array(run_task, wave)
        jobs += batch
        if opts.launcher == "slurm":
            ids = sorted({j.job_id.split("_")[0] for j in batch})
            print(f"submitted job array {', '.join(ids)}: {len(batch)} tasks", file=sys.stderr)
        for task, job in _as_finished(list(zip(wave, batch, strict=True))):
            try:
                on_done(task, job.result(), None)
            except Exception as exc:  # the task died: its row says how
                on_done(task, None, _death(job, exc))
    return jobs


def _as_finished(pairs: list):
    import time

    waiting = list(pairs)
    while waiting:
        for p in [p for p in waiting if p[1].done()]:
            waiting.remove(p)
            yield p
        if waiting:
            time.sleep(1.0)


def _death(job, exc: BaseException) -> str:
    from dimbench.bench.worker import one_line

    state = str(getattr(job, "state", "") or "").upper()
    status = "timeout" if "TIMEOUT" in state or "timed out" in str(exc).lower() else "error"
    return f"{status}: task {job.job_id} ({state or 'ended'}): {one_line(exc)}"


def cluster_device(device: str, opts: ClusterOptions) -> str:
    """The device a cluster sweep's tasks measure on: ``cpu`` or ``cuda`` (each task uses the
    GPU its allocation gives it); ``auto``: cuda when tasks get GPUs. Checked by syntax only:
    the submitting machine need not have it."""
    name = device.strip().lower()
    if name == AUTO:
        return "cuda" if opts.gpus_per_task or opts.launcher == "local" and _has_cuda() else "cpu"
    if name not in ("cpu", "cuda"):
        raise UsageError(
            f"--device {device!r} with --launcher: cpu or cuda (each task measures on the GPU "
            "its allocation gives it)"
        )
    if name == "cuda" and opts.launcher == "slurm" and not opts.gpus_per_task:
        raise UsageError("--device cuda with --launcher slurm needs --slurm-gpus-per-task 1")
    return name


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def launch_sweep(
    sweep: Sweep,
    out: Path | None,
    opts: ClusterOptions,
    *,
    redo: bool,
    retry_failed: bool,
    dry_run: bool,
) -> int:
    """``dimbench run --launcher``: submit what is not in ``out`` yet (print it: ``dry_run``),
    wait for the tasks, print the summary; returns how many configurations crashed."""
    from rich.console import Console

    from dimbench.bench import session
    from dimbench.bench.runner import append_result
    from dimbench.results import ResultStore

    if out is None and opts.launcher == "slurm":
        raise UsageError("--launcher slurm needs --out: a folder on a filesystem every node sees")
    console = Console(stderr=True)
    configs = sweep.configs()
    if dry_run:
        out_dir = Path(out if out is not None else session.default_out(sweep.device))
        todo = _todo(ResultStore(out_dir, sweep.suite.schema), configs, sweep, redo, retry_failed)
        print(describe(opts, _tasks(todo, out_dir, sweep, retry_failed), out_dir))
        return 0
    with session.results_store(sweep, out) as store:
        todo = _todo(store, configs, sweep, redo, retry_failed)
        if len(todo) < len(configs):
            console.print(
                f"[dim]{len(configs) - len(todo)} of {len(configs)} configurations already in "
                f"{store.csv_path}; skipping them[/dim]"
            )

        def on_done(task: Task, result: dict | None, death: str | None) -> None:
            cfg = Config.from_dict(task.config)
            if death is not None:
                status, _, error = death.partition(": ")
                append_result(store, cfg, {"status": status, "error": error, "slot": opts.launcher})
                result = {"label": cfg.label(), "status": status}
            console.print(f"{result['label']}  {result['status']}", highlight=False)

        if todo:
            tasks = f"{len(todo)} task{'s' * (len(todo) != 1)}"
            console.print(f"{sweep.suite.name}: {tasks} ({opts.launcher}) -> {store.csv_path}")
            try:
                with terminate_as_interrupt() as received:
                    submit(opts, _tasks(todo, store.out_dir, sweep, retry_failed), store.out_dir,
                           on_done)  # fmt: skip
            except KeyboardInterrupt:
                raise Interrupted(
                    f"stopped waiting: submitted tasks go on ({store.out_dir / SUBMITIT_FOLDER} "
                    "has their logs); once they end, the same command collects their rows and "
                    "resubmits what is missing",
                    received.signum,
                ) from None
        df = store.frame()
        if not df.empty:  # the sweep's rows: those some configuration matches
            mine = [
                len(pending(configs, {row_key(r)})) < len(configs) for r in df.to_dict("records")
            ]
            df = df.loc[mine].reset_index(drop=True)
        return session.print_summary(sweep, store, df)


def _todo(
    store: ResultStore, configs: list[Config], sweep: Sweep, redo: bool, retry_failed: bool
) -> list[Config]:
    if redo:
        return list(configs)
    done = store.done_keys(retry_failed=retry_failed, retry_too_big=not sweep.memory_check)
    return pending(configs, done)


def _tasks(todo: list[Config], out_dir: Path, sweep: Sweep, retry_failed: bool) -> list[Task]:
    memory_check = sweep.memory_check and sweep.suite.isolated
    return [Task(c.to_dict(), str(out_dir), memory_check, retry_failed) for c in todo]
