"""The speed gate: the head against a base revision, A/B in one run, or against a stored baseline.

``run_ab`` starts one worker per side (``sides``), measures both in interleaved shuffled rounds
with the calibration kernels (``rounds``), compares each benchmark under the rule in ``stats``,
and measures everything again, in fresh worker processes and fresh rounds, when something looks
slower: a regression is reported only when the re-run confirms it. The second look costs time
only then, and a chance burst of load (or an unlucky process) rarely strikes the same benchmark
twice while a real slowdown always repeats.

``run_baseline`` measures the head alone and compares it with a stored baseline's samples;
``record_baseline`` stores the head's samples as one.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dimbench.errors import UsageError
from dimbench.measure.rounds import interleave
from dimbench.regress.baseline import Baseline, load_baseline, save_baseline
from dimbench.regress.rounds import SMOOTHING_ROUNDS, Samples, split
from dimbench.regress.sides import Side, running
from dimbench.regress.stats import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    FASTER,
    REGRESSION,
    Comparison,
    compare,
)
from dimbench.regress.worker import CPU_CLOCK, CUDA_CLOCK, load_module
from dimbench.regress.worktree import Revision, checkout

DEFAULT_ROUNDS = 60
THREADS = 1
WARMUP = 2
OWN_CASES = Path(__file__).with_name("cases.py")
# Verdicts beyond the comparison's own (ok / faster / noisy / regression)
NEW, CHANGED, MISSING, RECORDED = "new", "changed", "missing", "recorded"
UNCONFIRMED = "unconfirmed"  # a suspect that the re-run did not confirm
ERROR = "error"  # the head cannot run the case
# Settings that must match for two runs' samples to be comparable
COMPARABLE_SETTINGS = ("clock", "threads", "device_type")

# What the gate concluded
PASS, FAIL, BROKEN, UPDATED = "pass", "regression", "error", "updated"
AB, BASELINE, UPDATE = "ab", "baseline", "update"

Progress = Callable[[str, int, int], None]  # (stage, rounds done, rounds in all)
# Space-separated NAME=VALUE pairs set in the head's workers only: how the gate's sensitivity
# check (tools/regress_eval.sh) slows one side down, e.g.
# DIMBENCH_REGRESS_HEAD_ENV="DIMBENCH_SCAN_CPU_EXTRA_PASSES=0.3" dimbench regress --base HEAD
HEAD_ENV = "DIMBENCH_REGRESS_HEAD_ENV"


def head_env_from_environ() -> tuple[tuple[str, str], ...]:
    """The pairs of $DIMBENCH_REGRESS_HEAD_ENV (a UsageError when one is not NAME=VALUE)."""
    pairs = []
    for item in os.environ.get(HEAD_ENV, "").split():
        name, eq, value = item.partition("=")
        if not (eq and name):
            raise UsageError(f"${HEAD_ENV}: expected NAME=VALUE pairs, got {item!r}")
        pairs.append((name, value))
    return tuple(pairs)


@dataclass(frozen=True)
class GateConfig:
    """The speed gate's settings (a sweep's are ``bench.spec.Config``)."""

    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    rounds: int = DEFAULT_ROUNDS
    device: str = "cpu"
    seed: int = 0
    cases_file: Path | None = None  # default: the head's cases.py (else this package's)
    # environment variables set in the head's workers only (see head_env_from_environ)
    head_env: tuple[tuple[str, str], ...] = field(default_factory=head_env_from_environ)


@dataclass
class Row:
    name: str
    verdict: str
    base_s: float | None = None  # median seconds per call, raw
    head_s: float | None = None
    comparison: Comparison | None = None
    confirmation: Comparison | None = None  # the re-run of a suspect
    note: str = ""

    @property
    def ratio(self) -> float | None:
        c = self.confirmation or self.comparison
        return None if c is None else c.ratio


@dataclass
class GateResult:
    status: str
    mode: str
    message: str = ""
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    rows: list[Row] = field(default_factory=list)
    base: dict = field(default_factory=dict)  # revision (or stored baseline) and its worker
    head: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    calibration_ratio: float | None = None  # head / base calibration time: ~1 when like for like
    settings: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)  # raw samples of every run (for --json)

    @property
    def exit_code(self) -> int:
        return 1 if self.status in (FAIL, BROKEN) else 0

    def to_dict(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


@dataclass
class Measured:
    """One side of one run: its samples, and what its worker reported."""

    samples: Samples
    worker: dict  # where its dimbench came from, the kernels it loaded
    errors: dict[str, str]  # cases it could not set up


# ---------------------------------------------------------------------- cases


def cases_file(head: Revision, config: GateConfig) -> Path:
    """The benchmarks come from the head (asv's model): its own cases.py when it has one."""
    if config.cases_file is not None:
        return config.cases_file
    own = head.root / "dimbench" / "regress" / "cases.py"
    return own if own.is_file() else OWN_CASES


@dataclass(frozen=True)
class CaseList:
    benchmarks: list[str]
    calibration: list[str]
    signatures: dict[str, str]


def load_cases(path: Path, device: str) -> CaseList:
    """The names and signatures of ``path``'s cases (its module imports only torch: building a
    case is what calls into dimbench, and that happens in the workers)."""
    module = load_module(path, "dimbench_gate_cases")
    benchmarks = list(module.gate_cases(device))
    calibration = list(module.CALIBRATION)
    if not calibration:
        raise ValueError(f"{path}: the gate needs at least one calibration kernel")
    return CaseList(
        [c.name for c in benchmarks],
        [c.name for c in calibration],
        {c.name: c.signature for c in [*benchmarks, *calibration]},
    )


# ---------------------------------------------------------------------- measuring


def settings(config: GateConfig, seed: int, clock: str, heap_kept: bool | None) -> dict:
    return {
        "clock": clock,
        "threads": THREADS,
        "device_type": config.device.split(":")[0],
        "rounds": config.rounds,
        "seed": seed,
        "warmup": WARMUP,
        "heap_kept": heap_kept,
        "normalisation": f"geomean of calibration, running median of {SMOOTHING_ROUNDS}",
        **({"head_env": dict(config.head_env)} if config.head_env else {}),
    }


def expected_clock(device: str) -> str:
    return CUDA_CLOCK if device.startswith("cuda") else CPU_CLOCK


def measure(
    trees: Sequence[tuple[str, Revision]],
    cases: Path,
    listed: CaseList,
    config: GateConfig,
    seed: int,
    work_dir: Path,
    on_round: Callable[[int], None] | None = None,
) -> list[Measured]:
    """Start a fresh worker per (label, tree), measure them all in interleaved rounds."""
    sides = [
        Side(
            label,
            tree.root,
            cases,
            work_dir,
            config.device,
            THREADS,
            WARMUP,
            env=dict(config.head_env) if label == "head" else None,
        )
        for label, tree in trees
    ]
    with running(sides):
        raw = interleave(sides, config.rounds, seed, on_round)
    out = []
    for side, samples in zip(sides, raw, strict=True):
        setup = side.setup
        run_settings = settings(config, seed, setup.get("clock", ""), setup.get("heap_kept"))
        worker = {**side.info, "torch": setup.get("torch"), "kernels": setup.get("kernels", [])}
        out.append(
            Measured(
                split(samples, set(listed.calibration), listed.signatures, run_settings),
                worker,
                dict(setup.get("errors", {})),
            )
        )
    return out


# ---------------------------------------------------------------------- comparing


def compare_runs(
    head: Samples,
    base: Samples,
    benchmarks: Sequence[str],
    threshold: float,
    alpha: float,
    head_errors: dict[str, str] | None = None,
    base_errors: dict[str, str] | None = None,
) -> list[Row]:
    """One row per benchmark of the head's cases, and per stored benchmark the head lacks."""
    head_errors, base_errors = head_errors or {}, base_errors or {}
    norm_head, norm_base = head.normalise(), base.normalise()
    rows = []
    for name in benchmarks:
        if name in head_errors:
            rows.append(Row(name, ERROR, note=f"head: {head_errors[name]}"))
            continue
        if name not in head.times:
            continue
        row = Row(name, NEW, head_s=statistics.median(head.times[name]))
        if name in base_errors:
            row.note = f"base: {base_errors[name]}"
        if name in base.times:
            row.base_s = statistics.median(base.times[name])
            if base.signatures.get(name) != head.signatures.get(name):
                row.verdict = CHANGED
            else:
                row.comparison = compare(norm_base[name], norm_head[name], threshold, alpha)
                row.verdict = row.comparison.verdict
        rows.append(row)
    for name, values in base.times.items():
        if name not in benchmarks:
            rows.append(Row(name, MISSING, base_s=statistics.median(values)))
    return rows


def calibration_ratio(head: Samples, base: Samples) -> float:
    """How much longer the calibration kernels took on the head's side than on the base's."""
    return statistics.median(head.calibration_per_round()) / statistics.median(
        base.calibration_per_round()
    )


def confirm(rows: list[Row], head: Samples, base: Samples, threshold: float, alpha: float) -> None:
    """Judge the suspects again on a re-run; those it does not confirm become unconfirmed."""
    norm_head, norm_base = head.normalise(), base.normalise()
    for row in rows:
        if row.verdict != REGRESSION:
            continue
        row.confirmation = compare(norm_base[row.name], norm_head[row.name], threshold, alpha)
        if not row.confirmation.regressed:
            row.verdict = UNCONFIRMED


def conclude(result: GateResult, against: str) -> GateResult:
    broken = [row.name for row in result.rows if row.verdict == ERROR]
    regressed = [row.name for row in result.rows if row.verdict == REGRESSION]
    threshold = f"{result.threshold:.0%}"
    if regressed:
        result.status = FAIL
        result.message = f"{len(regressed)} regression(s) over {threshold}: {', '.join(regressed)}"
    elif broken:
        result.status = BROKEN
        result.message = f"the head cannot run {', '.join(broken)}"
    else:
        result.status = PASS
        result.message = f"no regression over {threshold} against {against}"
    if broken and regressed:
        result.message += f"; the head cannot run {', '.join(broken)}"
    return result


def _machine(device: str) -> dict:
    from dimbench.measure.metadata import cpu_count, cpu_model, device_name, load_average
    from dimbench.regress.baseline import machine_class

    return {
        "machine_class": machine_class(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
        "cpus": cpu_count(),
        "load_avg_1m_start": load_average(),
    }


def _finish_machine(result: GateResult) -> None:
    from dimbench.measure.metadata import load_average

    result.machine["load_avg_1m_end"] = load_average()


def _progress(on_round: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    return None if on_round is None else (lambda done: on_round(stage, done, total))


# ---------------------------------------------------------------------- the flows


def run_ab(
    head: Revision,
    base: Revision,
    config: GateConfig = GateConfig(),
    on_round: Progress | None = None,
) -> GateResult:
    """The head's working tree against ``base`` (checked out as a temporary worktree)."""
    cases = cases_file(head, config)
    listed = load_cases(cases, config.device)
    result = GateResult(PASS, AB, threshold=config.threshold, alpha=config.alpha)
    result.machine = _machine(config.device)
    result.head = head.to_dict()
    with tempfile.TemporaryDirectory(prefix="dimbench-regress-") as tmp:
        work = Path(tmp)
        with checkout(base, work) as base_tree:
            result.base = base_tree.to_dict()
            trees = [("base", base_tree), ("head", head)]
            _measure_and_judge(result, trees, cases, listed, config, work, on_round)
    _finish_machine(result)
    return conclude(result, f"base {base.sha[:12]} ({base.rev})")


def _measure_and_judge(
    result: GateResult,
    trees: Sequence[tuple[str, Revision]],
    cases: Path,
    listed: CaseList,
    config: GateConfig,
    work: Path,
    on_round: Progress | None,
    stored: Samples | None = None,
) -> None:
    """Measure ``trees`` (base and head, or the head alone against ``stored`` samples), judge
    each benchmark, and measure everything again to confirm or clear any regression."""

    def run(seed: int, stage: str, name: str) -> tuple[Measured, Measured | None, Samples]:
        *base, head_side = measure(
            trees, cases, listed, config, seed, work, _progress(on_round, stage, config.rounds)
        )
        base_side = base[0] if base else None
        _record(result, base_side, head_side, name)
        return head_side, base_side, (stored if base_side is None else base_side.samples)

    h, b, reference = run(config.seed, "measure", "first")
    result.settings = h.samples.settings
    result.calibration_ratio = calibration_ratio(h.samples, reference)
    result.rows = compare_runs(
        h.samples,
        reference,
        listed.benchmarks,
        config.threshold,
        config.alpha,
        h.errors,
        b.errors if b is not None else None,
    )
    if any(row.verdict == REGRESSION for row in result.rows):
        # everything again, not only the suspects: a benchmark's time depends on what ran next
        # to it (caches), so the re-run keeps the company of the first
        h2, _, reference2 = run(config.seed + 1, "confirm", "confirmation")
        confirm(result.rows, h2.samples, reference2, config.threshold, config.alpha)


def _record(result: GateResult, base: Measured | None, head: Measured, run: str) -> None:
    result.samples[run] = {"head": head.samples.raw()}
    result.head.setdefault("workers", []).append(head.worker)
    result.head["errors"] = head.errors
    if base is not None:
        result.samples[run]["base"] = base.samples.raw()
        result.base.setdefault("workers", []).append(base.worker)
        result.base["errors"] = base.errors


def incomparable(config: GateConfig, baseline: Baseline, listed: CaseList) -> str | None:
    """Why the baseline's samples cannot be compared with this run's (None when they can)."""
    now = {"clock": expected_clock(config.device), "threads": THREADS}
    now["device_type"] = config.device.split(":")[0]
    for key in COMPARABLE_SETTINGS:
        if baseline.samples.settings.get(key) != now[key]:
            return (
                f"the baseline was measured with {key}={baseline.samples.settings.get(key)!r}, "
                f"this run uses {now[key]!r}"
            )
    for name in listed.calibration:
        if baseline.samples.signatures.get(name) != listed.signatures[name]:
            return f"the calibration kernel {name} differs from the baseline's"
    return None


def check_baseline(head: Revision, path: Path, config: GateConfig) -> Baseline:
    """The stored baseline at ``path``, checked comparable before anything is measured."""
    baseline = load_baseline(path)
    reason = incomparable(config, baseline, load_cases(cases_file(head, config), config.device))
    if reason is not None:
        raise UsageError(f"baseline {path} is not comparable: {reason}; rerun with --update")
    return baseline


def run_baseline(
    head: Revision,
    path: Path,
    config: GateConfig = GateConfig(),
    on_round: Progress | None = None,
) -> GateResult:
    """The head against the samples stored in the baseline file ``path``."""
    stored = check_baseline(head, path, config)
    cases = cases_file(head, config)
    listed = load_cases(cases, config.device)
    result = GateResult(PASS, BASELINE, threshold=config.threshold, alpha=config.alpha)
    result.machine = _machine(config.device)
    result.head = head.to_dict()
    result.base = {
        "baseline": str(path),
        "sha": stored.commit,
        "label": stored.commit,
        "recorded": stored.recorded,
        "machine_class": stored.machine_class,
        "load_avg_1m": stored.machine.get("load_avg_1m"),
    }
    with tempfile.TemporaryDirectory(prefix="dimbench-regress-") as tmp:
        trees = [("head", head)]
        work = Path(tmp)
        _measure_and_judge(result, trees, cases, listed, config, work, on_round, stored.samples)
    _finish_machine(result)
    conclude(result, f"the baseline {path} ({stored.commit or 'no commit recorded'})")
    if any(row.verdict in (FASTER, NEW, CHANGED) for row in result.rows):
        result.message += "; faster, new or changed benchmarks: record them with --update"
    return result


def record_baseline(
    head: Revision,
    path: Path,
    config: GateConfig = GateConfig(),
    on_round: Progress | None = None,
) -> GateResult:
    """Measure the head and store its samples as the baseline ``path`` of this machine class;
    when a comparable baseline is there already, the rows say how the new one differs."""
    from dimbench.measure.metadata import run_metadata

    cases = cases_file(head, config)
    listed = load_cases(cases, config.device)
    old = load_baseline(path) if path.exists() else None
    result = GateResult(UPDATED, UPDATE, threshold=config.threshold, alpha=config.alpha)
    result.machine = _machine(config.device)
    result.head = head.to_dict()
    with tempfile.TemporaryDirectory(prefix="dimbench-regress-") as tmp:
        (h,) = measure(
            [("head", head)],
            cases,
            listed,
            config,
            config.seed,
            Path(tmp),
            _progress(on_round, "measure", config.rounds),
        )
    _record(result, None, h, "first")
    result.settings = h.samples.settings
    machine = result.machine["machine_class"]
    metadata = {**run_metadata(config.device), "threads": THREADS, "git_sha": head.label}
    save_baseline(path, h.samples, machine, metadata)
    result.message = f"baseline for {machine} written to {path} ({head.label})"
    result.rows = [
        Row(name, RECORDED, head_s=statistics.median(h.samples.times[name]))
        for name in listed.benchmarks
        if name in h.samples.times
    ]
    if old is not None and incomparable(config, old, listed) is None:
        result.rows = compare_runs(
            h.samples, old.samples, listed.benchmarks, config.threshold, config.alpha, h.errors
        )
        result.calibration_ratio = calibration_ratio(h.samples, old.samples)
    _finish_machine(result)
    return result
