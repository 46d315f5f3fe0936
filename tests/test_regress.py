"""The speed gate: the comparison rule on synthetic samples, baselines, the gate's flow, the CLI."""

import json
import random

import pytest
import torch

from dimbench.cli import main
from dimbench.errors import UsageError
from dimbench.measure import regress
from dimbench.measure.regress import (
    CHANGED,
    FAIL,
    MISSING,
    NEW,
    NO_BASELINE,
    PASS,
    UNCONFIRMED,
    UPDATED,
    compare_runs,
    run_gate,
)
from dimbench.measure.regress_baseline import (
    BaselineError,
    baseline_path,
    load_baseline,
    save_baseline,
)
from dimbench.measure.regress_cases import CALIBRATION, Case, gate_cases
from dimbench.measure.regress_run import Samples, measure, running_median
from dimbench.measure.regress_stats import FASTER, NOISY, OK, REGRESSION, compare

ROUNDS = 40
SETTINGS = {"clock": "process_time", "threads": 1, "device_type": "cpu"}


def noisy(median: float, n: int = ROUNDS, spread: float = 0.08, seed: int = 0) -> list[float]:
    """Timing-like samples: log-normal noise plus a few slow outliers, as a shared CPU gives."""
    rng = random.Random(seed)
    out = [median * rng.lognormvariate(0, spread) for _ in range(n)]
    for i in rng.sample(range(n), n // 10):
        out[i] *= 1 + 2 * rng.random()
    return out


def synthetic_run(times: dict[str, float], machine: float = 1.0, seed: int = 0) -> Samples:
    """A run whose machine is ``machine`` times slower: benchmarks and calibration alike."""
    return Samples(
        times={k: noisy(v * machine, seed=seed + i) for i, (k, v) in enumerate(times.items())},
        calibration={
            "calib/a": noisy(1e-3 * machine, seed=seed + 100),
            "calib/b": noisy(2e-3 * machine, seed=seed + 101),
        },
        signatures={c.name: c.signature for c in fake_cases([*times, "calib/a", "calib/b"])},
        settings=dict(SETTINGS),
    )


def fake_cases(names) -> list[Case]:
    return [Case(n, "kernel", lambda device: lambda: None) for n in names]


# ---------------------------------------------------------------------- the rule


def test_noise_passes():
    verdicts = [compare(noisy(1.0, seed=s), noisy(1.0, seed=1000 + s)).verdict for s in range(50)]
    assert REGRESSION not in verdicts
    assert verdicts.count(OK) >= 45


def test_25_percent_slower_fails():
    for s in range(20):
        c = compare(noisy(1.0, seed=s), noisy(1.25, seed=1000 + s))
        assert c.verdict == REGRESSION, c
        assert 1.15 < c.ratio < 1.4 and c.p_slower < 0.01


def test_slowdown_under_threshold_passes():
    c = compare(noisy(1.0, spread=0.01), noisy(1.10, spread=0.01, seed=1))
    assert c.p_slower < 1e-6  # clearly slower ...
    assert c.verdict == OK  # ... but by less than the threshold


def test_slowdown_that_the_spread_does_not_support_is_noisy():
    base = [1.0, 0.5, 2.0, 1.0, 0.4, 2.5, 0.9]
    now = [1.3, 0.5, 2.1, 1.3, 0.45, 2.6, 0.8]
    c = compare(base, now)
    assert c.ratio > 1.15 and c.p_slower > 0.01
    assert c.verdict == NOISY


def test_faster_is_reported():
    assert compare(noisy(1.0), noisy(0.7, seed=1)).verdict == FASTER


def test_threshold_is_respected():
    base, now = noisy(1.0, spread=0.02), noisy(1.25, spread=0.02, seed=1)
    assert compare(base, now, threshold=0.15).verdict == REGRESSION
    assert compare(base, now, threshold=0.30).verdict == OK


def test_busier_machine_passes():
    """Everything, calibration included, 30% slower: normalised, no benchmark moved."""
    times = {"scan": 1e-3, "attention": 5e-3, "block": 2e-2}
    base = synthetic_run(times, seed=0)
    busy = synthetic_run(times, machine=1.3, seed=7)
    rows = compare_runs(busy, base, fake_cases(times), 0.15, 0.01)
    assert {r.verdict for r in rows} == {OK}
    # without the calibration the same samples would read as regressions
    assert all(compare(base.times[k], busy.times[k]).verdict == REGRESSION for k in times)


def test_real_slowdown_on_a_busier_machine_fails():
    times = {"scan": 1e-3, "attention": 5e-3}
    base = synthetic_run(times, seed=0)
    now = synthetic_run({"scan": 1.25e-3, "attention": 5e-3}, machine=1.3, seed=7)
    verdicts = {r.name: r.verdict for r in compare_runs(now, base, fake_cases(times), 0.15, 0.01)}
    assert verdicts == {"scan": REGRESSION, "attention": OK}


def test_new_changed_and_missing_benchmarks_are_not_compared():
    base = synthetic_run({"kept": 1e-3, "resized": 1e-3, "dropped": 1e-3})
    now = synthetic_run({"kept": 1e-3, "resized": 9e-3, "added": 1e-3}, seed=3)
    cases = fake_cases(["kept", "resized", "added"])
    cases[1] = Case("resized", "kernel", cases[1].setup, params={"length": 512})
    rows = {r.name: r for r in compare_runs(now, base, cases, 0.15, 0.01)}
    assert rows["kept"].verdict == OK
    assert rows["resized"].verdict == CHANGED and rows["resized"].comparison is None
    assert rows["added"].verdict == NEW and rows["added"].baseline_s is None
    assert rows["dropped"].verdict == MISSING and rows["dropped"].now_s is None


def test_running_median_and_calibration():
    assert running_median([1, 9, 1, 1, 1], 3) == [5, 1, 1, 1, 1]
    s = Samples(times={"x": [2.0, 4.0, 6.0]}, calibration={"a": [1.0, 2.0, 3.0]}, settings={})
    assert s.rounds == 3
    assert s.calibration_per_round() == [2.0, 2.0, 2.0]  # a 5-round window covers all three
    assert s.normalise()["x"] == pytest.approx([1.0, 2.0, 3.0])


# ---------------------------------------------------------------------- baselines


def test_baseline_round_trip(tmp_path):
    run = synthetic_run({"scan/forward[cpu]": 1e-3})
    path = tmp_path / "m.json"
    save_baseline(path, run, "amd-epyc-2c", {"git_sha": "abc123", "cpu_model": "AMD EPYC"})
    doc = json.loads(path.read_text())
    assert doc["commit"] == "abc123" and doc["machine"]["cpu_model"] == "AMD EPYC"
    assert doc["benchmarks"]["scan/forward[cpu]"]["samples_s"] == run.times["scan/forward[cpu]"]
    back = load_baseline(path)
    assert back.samples.times == run.times and back.samples.calibration == run.calibration
    assert back.samples.settings == run.settings and back.machine_class == "amd-epyc-2c"


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"schema": "other"}', '{"schema": "dimbench.regress/1", "benchmarks": {}}'],
)
def test_malformed_baseline_is_a_usage_error(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BaselineError) as err:
        load_baseline(path)
    assert isinstance(err.value, UsageError)


def test_baseline_path(tmp_path):
    assert baseline_path(tmp_path / "x.json", "m") == tmp_path / "x.json"
    assert baseline_path(tmp_path, "m") == tmp_path / "m.json"
    assert baseline_path(None, "m").parts[-3:] == ("results", "baselines", "m.json")


# ---------------------------------------------------------------------- the gate's flow


class FakeMeasure:
    """Stands in for ``measure``: hands out prepared runs in order, records what was asked."""

    def __init__(self, *runs: Samples):
        self.runs = list(runs)
        self.calls: list[list[str]] = []

    def __call__(self, cases, calibration, rounds, *args, **kwargs) -> Samples:
        self.calls.append([c.name for c in cases])
        run = self.runs.pop(0)
        keep = {c.name for c in cases}
        return Samples(
            {k: v for k, v in run.times.items() if k in keep},
            run.calibration,
            run.signatures,
            run.settings,
        )


def test_missing_baseline_is_reported_not_failed(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise AssertionError("nothing is measured without a baseline")

    monkeypatch.setattr(regress, "measure", explode)
    result = run_gate(baseline=tmp_path, cases=fake_cases(["a"]), calibration=fake_cases(["c"]))
    assert result.status == NO_BASELINE and result.exit_code == 0
    assert "no baseline for machine class" in result.message


def _gate(tmp_path, monkeypatch, *runs: Samples):
    fake = FakeMeasure(*runs)
    monkeypatch.setattr(regress, "measure", fake)
    names = list(runs[0].times)
    result = run_gate(
        baseline=tmp_path / "b.json",
        cases=fake_cases(names),
        calibration=fake_cases(["calib/a", "calib/b"]),
    )
    return result, fake


def test_gate_confirms_a_regression(tmp_path, monkeypatch):
    times = {"scan": 1e-3, "conv": 1e-3}
    save_baseline(tmp_path / "b.json", synthetic_run(times), "m", {"git_sha": "base"})
    slow = synthetic_run({"scan": 1.3e-3, "conv": 1e-3}, seed=5)
    result, fake = _gate(
        tmp_path, monkeypatch, slow, synthetic_run(times | {"scan": 1.3e-3}, seed=9)
    )
    assert fake.calls == [["scan", "conv"], ["scan", "conv"]]  # measured again, in company
    assert result.status == FAIL and result.exit_code == 1
    row = {r.name: r for r in result.rows}["scan"]
    assert row.verdict == REGRESSION and row.confirmation.regressed


def test_gate_drops_an_unconfirmed_suspect(tmp_path, monkeypatch):
    times = {"scan": 1e-3, "conv": 1e-3}
    save_baseline(tmp_path / "b.json", synthetic_run(times), "m", {"git_sha": "base"})
    fluke = synthetic_run({"scan": 1.3e-3, "conv": 1e-3}, seed=5)
    result, _ = _gate(tmp_path, monkeypatch, fluke, synthetic_run(times, seed=9))
    assert result.status == PASS and result.exit_code == 0
    assert {r.name: r.verdict for r in result.rows}["scan"] == UNCONFIRMED


def test_gate_refuses_an_incomparable_baseline(tmp_path, monkeypatch):
    times = {"scan": 1e-3}
    base = synthetic_run(times)
    base.settings["clock"] = "perf_counter+synchronize"
    save_baseline(tmp_path / "b.json", base, "m", {})
    result, _ = _gate(tmp_path, monkeypatch, synthetic_run(times))
    assert result.status == NO_BASELINE and "not comparable" in result.message


# ---------------------------------------------------------------------- real cases, CLI


def test_gate_cases_cover_the_kernels_and_run():
    from dimbench.ops import scan_backends

    cases = gate_cases("cpu")
    names = {c.name for c in cases}
    for backend in scan_backends("cpu"):
        assert {f"scan/forward[{backend}]", f"scan/forward+backward[{backend}]"} <= names
    assert {"attention/forward[sdpa]", "attention/forward[math]"} <= names
    assert "causal-conv/forward[torch]" in names
    assert {"dim-block/forward+backward", "dit-block/forward+backward"} <= names
    assert len(names) == len(cases)
    for case in [*cases, *CALIBRATION]:
        case.setup(torch.device("cpu"))()  # builds and runs once


def test_measure_interleaves_rounds():
    seen: list[str] = []

    def case(name):
        return Case(name, "kernel", lambda device: lambda: seen.append(name))

    s = measure([case("a"), case("b")], [case("c")], rounds=5, warmup=0, seed=3)
    assert s.rounds == 5 and set(s.times) == {"a", "b"} and set(s.calibration) == {"c"}
    rounds = [seen[i : i + 3] for i in range(0, 15, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every round runs each once
    assert len({tuple(r) for r in rounds}) > 1  # in shuffled orders
    assert s.settings["threads"] == 1 and s.settings["clock"] == "process_time"


def _tiny(monkeypatch):
    """The CLI on two tiny real workloads (a smoke run, not a speed test)."""
    x = torch.randn(64, 64)
    tiny = [Case("tiny/mm", "kernel", lambda device: lambda: x @ x, repeat=4)]
    calib = [Case("calib/tiny", "calibration", lambda device: lambda: x + x, repeat=8)]
    monkeypatch.setattr(regress, "gate_cases", lambda device: tiny)
    monkeypatch.setattr(regress, "CALIBRATION", calib)


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["regress", *args])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_cli_update_then_compare(tmp_path, monkeypatch, capsys):
    _tiny(monkeypatch)
    code, out, _ = run_cli(["--baseline", str(tmp_path), "--rounds", "5"], capsys)
    assert code == 0 and "no baseline for machine class" in out
    code, out, _ = run_cli(["--baseline", str(tmp_path), "--rounds", "8", "--update"], capsys)
    assert code == 0 and UPDATED in out and "tiny/mm" in out
    (written,) = tmp_path.glob("*.json")
    report = tmp_path / "report.json"
    args = ["--baseline", str(written), "--rounds", "8", "--threshold", "5", "--json", str(report)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    assert "tiny/mm" in out and "gate took" in out
    doc = json.loads(report.read_text())
    assert doc["status"] == PASS and len(doc["samples"]["times"]["tiny/mm"]) == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "0"], "--threshold"),
        (["--alpha", "1.5"], "--alpha"),
        (["--rounds", "2"], "--rounds"),
        (["--device", "tpu"], "--device"),
        (["--baseline", "/nonexistent/gate.json"], "no such file or folder"),
    ],
)
def test_cli_bad_input_exits_2(args, message, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_malformed_baseline_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli(["--baseline", str(bad)], capsys)
    assert code == 2 and "cannot read baseline" in err
