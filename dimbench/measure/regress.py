"""The speed gate: measure the gate's benchmarks, compare them with this machine class's baseline.

``run_gate`` measures every benchmark in interleaved rounds with the calibration kernels
(``regress_run``), compares each with its baseline under the rule in ``regress_stats``, and
measures everything again in fresh rounds when something looks slower: a regression is reported
only when the re-run confirms it. The second look costs time only then, and a chance burst of
load rarely strikes the same benchmark twice while a real slowdown always repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dimbench.measure.metadata import load_average
from dimbench.measure.regress_baseline import (
    Baseline,
    baseline_path,
    load_baseline,
    machine_class,
    save_baseline,
)
from dimbench.measure.regress_cases import CALIBRATION, Case, gate_cases
from dimbench.measure.regress_run import Samples, measure
from dimbench.measure.regress_stats import (
    DEFAULT_ALPHA,
    DEFAULT_THRESHOLD,
    FASTER,
    REGRESSION,
    Comparison,
    compare,
)

DEFAULT_ROUNDS = 60
THREADS = 1
# Verdicts beyond the comparison's own (ok / faster / noisy / regression)
NEW, CHANGED, MISSING, RECORDED = "new", "changed", "missing", "recorded"
UNCONFIRMED = "unconfirmed"  # a suspect that the re-run did not confirm
# Settings that must match for two runs' samples to be comparable
COMPARABLE_SETTINGS = ("clock", "threads", "device_type")

# What the gate concluded
PASS, FAIL, NO_BASELINE, UPDATED = "pass", "regression", "no-baseline", "updated"


@dataclass
class Row:
    name: str
    verdict: str
    baseline_s: float | None = None  # median seconds per call, raw
    now_s: float | None = None
    comparison: Comparison | None = None
    confirmation: Comparison | None = None  # the re-run of a suspect

    @property
    def ratio(self) -> float | None:
        c = self.confirmation or self.comparison
        return None if c is None else c.ratio


@dataclass
class GateResult:
    status: str
    machine_class: str
    baseline_path: str
    message: str = ""
    threshold: float = DEFAULT_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    rows: list[Row] = field(default_factory=list)
    machine_ratio: float | None = None  # calibration now / baseline: >1 = slower machine now
    load: tuple[float | None, float | None] = (None, None)  # 1-min load average: baseline, now
    baseline_commit: str = ""
    settings: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)  # this run's raw samples (for --json)

    @property
    def exit_code(self) -> int:
        return 1 if self.status == FAIL else 0

    def to_dict(self) -> dict:
        return asdict(self)


def machine_ratio(now: Samples, baseline: Samples) -> float:
    """How much slower the calibration kernels ran now than in the baseline run."""
    return statistics.median(now.calibration_per_round()) / statistics.median(
        baseline.calibration_per_round()
    )


def incomparable(now_settings: dict, baseline: Baseline, calibration: list[Case]) -> str | None:
    """Why the baseline's samples cannot be compared with this run's (None when they can)."""
    for key in COMPARABLE_SETTINGS:
        if baseline.samples.settings.get(key) != now_settings.get(key):
            return (
                f"the baseline was measured with {key}={baseline.samples.settings.get(key)!r}, "
                f"this run uses {now_settings.get(key)!r}"
            )
    for case in calibration:
        if baseline.samples.signatures.get(case.name) != case.signature:
            return f"the calibration kernel {case.name} differs from the baseline's"
    return None


def compare_runs(
    now: Samples,
    baseline: Samples,
    cases: list[Case],
    threshold: float,
    alpha: float,
) -> list[Row]:
    """One row per benchmark measured now or in the baseline."""
    norm_now, norm_base = now.normalise(), baseline.normalise()
    rows = []
    for case in cases:
        if case.name not in now.times:
            continue
        row = Row(case.name, NEW, now_s=statistics.median(now.times[case.name]))
        if case.name in baseline.times:
            row.baseline_s = statistics.median(baseline.times[case.name])
            if baseline.signatures.get(case.name) != case.signature:
                row.verdict = CHANGED
            else:
                row.comparison = compare(
                    norm_base[case.name], norm_now[case.name], threshold, alpha
                )
                row.verdict = row.comparison.verdict
        rows.append(row)
    measured = {case.name for case in cases}
    for name, values in baseline.times.items():
        if name not in measured:
            rows.append(Row(name, MISSING, baseline_s=statistics.median(values)))
    return rows


def run_gate(
    baseline: Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    rounds: int = DEFAULT_ROUNDS,
    update: bool = False,
    device: str = "cpu",
    seed: int = 0,
    cases: list[Case] | None = None,
    calibration: list[Case] | None = None,
    on_round: Callable[[str, int, int], None] | None = None,
) -> GateResult:
    """Measure, compare with the baseline of this machine class, confirm suspects.

    ``update``: measure and write the baseline instead of judging. Without a baseline for this
    machine class nothing is measured and the result says so (not a failure).
    ``on_round(stage, done, total)`` reports progress.
    """
    machine = machine_class(device)
    path = baseline_path(baseline, machine)
    cases = gate_cases(device) if cases is None else cases
    calibration = list(CALIBRATION) if calibration is None else calibration
    result = GateResult(NO_BASELINE, machine, str(path), threshold=threshold, alpha=alpha)

    old = load_baseline(path) if path.exists() else None
    if old is None and not update:
        result.message = (
            f"no baseline for machine class {machine} ({path}); "
            "record one with `dimbench regress --update`"
        )
        return result

    def progress(stage: str, total: int) -> Callable[[int], None] | None:
        return None if on_round is None else (lambda done: on_round(stage, done, total))

    now = measure(
        cases, calibration, rounds, device, THREADS, seed, on_round=progress("measure", rounds)
    )
    result.settings = now.settings
    result.samples = {"times": now.times, "calibration": now.calibration}
    reason = None if old is None else incomparable(now.settings, old, calibration)

    if update:
        from dimbench.measure.metadata import run_metadata

        metadata = {**run_metadata(device), "threads": THREADS}
        save_baseline(path, now, machine, metadata)
        result.status = UPDATED
        result.message = f"baseline for {machine} written to {path} ({metadata['git_sha']})"
        result.rows = [
            Row(c.name, RECORDED, now_s=statistics.median(now.times[c.name])) for c in cases
        ]
        if old is not None and reason is None:  # show how the new baseline differs
            result.rows = compare_runs(now, old.samples, cases, threshold, alpha)
            result.machine_ratio = machine_ratio(now, old.samples)
        return result

    assert old is not None
    result.baseline_commit = old.commit
    if reason is not None:
        result.message = f"baseline {path} is not comparable: {reason}; rerun with --update"
        return result
    result.machine_ratio = machine_ratio(now, old.samples)
    result.load = (old.machine.get("load_avg_1m"), load_average())
    result.rows = compare_runs(now, old.samples, cases, threshold, alpha)

    suspects = [row for row in result.rows if row.verdict == REGRESSION]
    if suspects:
        # all cases again, not only the suspects: a benchmark's time depends on what ran
        # before it (caches), so the re-run keeps the company the baseline was measured in
        again = measure(
            cases,
            calibration,
            rounds,
            device,
            THREADS,
            seed + 1,
            on_round=progress("confirm", rounds),
        )
        base_norm, again_norm = old.samples.normalise(), again.normalise()
        for row in suspects:
            row.confirmation = compare(base_norm[row.name], again_norm[row.name], threshold, alpha)
            if not row.confirmation.regressed:
                row.verdict = UNCONFIRMED
        result.samples["confirmation"] = {"times": again.times, "calibration": again.calibration}

    regressed = [row.name for row in result.rows if row.verdict == REGRESSION]
    result.status = FAIL if regressed else PASS
    result.message = (
        f"{len(regressed)} regression(s) over {threshold:.0%}: {', '.join(regressed)}"
        if regressed
        else f"no regression over {threshold:.0%} against {old.commit or 'the baseline'}"
    )
    if any(row.verdict in (FASTER, NEW, CHANGED) for row in result.rows):
        result.message += "; faster, new or changed benchmarks: record them with --update"
    return result
