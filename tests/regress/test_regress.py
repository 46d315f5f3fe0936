"""The speed gate: the comparison rule on synthetic samples, stored baselines, the rounds, the
revisions and their worktree, the workers that import each side from its own tree, the A/B flow
on a tiny repository with synthetic cases, and the CLI's exit codes and JSON."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dimbench.cli import main
from dimbench.errors import UsageError
from dimbench.regress import gate
from dimbench.regress.baseline import (
    BaselineError,
    baseline_path,
    load_baseline,
    save_baseline,
)
from dimbench.regress.cases import CALIBRATION, Case, gate_cases
from dimbench.regress.gate import (
    AB,
    CHANGED,
    ERROR,
    FAIL,
    MISSING,
    NEW,
    PASS,
    UNCONFIRMED,
    UPDATED,
    CaseList,
    GateConfig,
    Measured,
    compare_runs,
    run_ab,
    run_baseline,
)
from dimbench.regress.rounds import Samples, interleave, running_median
from dimbench.regress.sides import Side, WorkerError, running
from dimbench.regress.stats import FASTER, NOISY, OK, REGRESSION, compare
from dimbench.regress.worker import CUDA_CLOCK, Runner, timer
from dimbench.regress.worktree import (
    Revision,
    checkout,
    head_revision,
    resolve_base,
    source_tree,
)

ROUNDS = 40
SETTINGS = {"clock": "process_time", "threads": 1, "device_type": "cpu"}
REPO = Path(__file__).resolve().parents[2]


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
        signatures={n: "{}" for n in [*times, "calib/a", "calib/b"]},
        settings=dict(SETTINGS),
    )


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
    c = compare(noisy(1.0, spread=0.01), noisy(1.10, spread=0.01, seed=1), threshold=0.15)
    assert c.p_slower < 1e-6  # clearly slower ...
    assert c.verdict == OK  # ... but by less than the threshold


def test_slowdown_that_the_spread_does_not_support_is_noisy():
    base = [1.0, 0.5, 2.0, 1.0, 0.4, 2.5, 0.9]
    head = [1.3, 0.5, 2.1, 1.3, 0.45, 2.6, 0.8]
    c = compare(base, head)
    assert c.ratio > 1.15 and c.p_slower > 0.01
    assert c.verdict == NOISY


def test_faster_is_reported():
    assert compare(noisy(1.0), noisy(0.7, seed=1)).verdict == FASTER


def test_threshold_is_respected():
    base, head = noisy(1.0, spread=0.02), noisy(1.25, spread=0.02, seed=1)
    assert compare(base, head, threshold=0.15).verdict == REGRESSION
    assert compare(base, head, threshold=0.30).verdict == OK


def test_busier_machine_passes():
    """Everything, calibration included, 30% slower: normalised, no benchmark moved."""
    times = {"scan": 1e-3, "attention": 5e-3, "block": 2e-2}
    base = synthetic_run(times, seed=0)
    busy = synthetic_run(times, machine=1.3, seed=7)
    rows = compare_runs(busy, base, list(times), 0.15, 0.01)
    assert {r.verdict for r in rows} == {OK}
    # without the calibration the same samples would read as regressions
    assert all(compare(base.times[k], busy.times[k]).verdict == REGRESSION for k in times)


def test_real_slowdown_on_a_busier_machine_fails():
    times = {"scan": 1e-3, "attention": 5e-3}
    base = synthetic_run(times, seed=0)
    head = synthetic_run({"scan": 1.25e-3, "attention": 5e-3}, machine=1.3, seed=7)
    verdicts = {r.name: r.verdict for r in compare_runs(head, base, list(times), 0.15, 0.01)}
    assert verdicts == {"scan": REGRESSION, "attention": OK}


def test_new_changed_missing_and_broken_benchmarks_are_not_compared():
    base = synthetic_run({"kept": 1e-3, "resized": 1e-3, "dropped": 1e-3, "new-in-head": 1e-3})
    head = synthetic_run({"kept": 1e-3, "resized": 9e-3, "added": 1e-3, "new-in-head": 1e-3})
    head.signatures["resized"] = '{"length": 512}'
    del base.times["new-in-head"]  # the base could not set it up
    names = ["kept", "resized", "added", "new-in-head", "broken"]
    rows = compare_runs(
        head,
        base,
        names,
        0.15,
        0.01,
        head_errors={"broken": "AttributeError: no such op"},
        base_errors={"new-in-head": "ImportError: old base"},
    )
    rows = {r.name: r for r in rows}
    assert rows["kept"].verdict == OK
    assert rows["resized"].verdict == CHANGED and rows["resized"].comparison is None
    assert rows["added"].verdict == NEW and rows["added"].base_s is None
    assert rows["new-in-head"].verdict == NEW and "old base" in rows["new-in-head"].note
    assert rows["dropped"].verdict == MISSING and rows["dropped"].head_s is None
    assert rows["broken"].verdict == ERROR and "no such op" in rows["broken"].note


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
    save_baseline(path, run, "amd-epyc-avx512-2c", {"git_sha": "abc123", "cpu_model": "AMD EPYC"})
    doc = json.loads(path.read_text())
    assert doc["commit"] == "abc123" and doc["machine"]["cpu_model"] == "AMD EPYC"
    assert doc["benchmarks"]["scan/forward[cpu]"]["samples_s"] == run.times["scan/forward[cpu]"]
    back = load_baseline(path)
    assert back.samples.times == run.times and back.samples.calibration == run.calibration
    assert back.samples.settings == run.settings and back.machine_class == "amd-epyc-avx512-2c"


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
    assert baseline_path(tmp_path / "x.json", "m", REPO) == tmp_path / "x.json"
    assert baseline_path(tmp_path, "m", REPO) == tmp_path / "m.json"
    assert baseline_path(None, "m", tmp_path) == tmp_path / "results" / "baselines" / "m.json"


# ---------------------------------------------------------------------- the flow, faked


class FakeMeasure:
    """Stands in for ``gate.measure``: hands out prepared runs in order, records the calls."""

    def __init__(self, *runs: list[Samples]):
        self.runs = list(runs)
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, trees, cases, listed, config, seed, work_dir, on_round=None):
        self.calls.append(([label for label, _ in trees], seed))
        return [Measured(s, {"dimbench_file": "x"}, {}) for s in self.runs.pop(0)]


def _fake_listed(monkeypatch, names):
    calibration = ["calib/a", "calib/b"]
    listed = CaseList(list(names), calibration, {n: "{}" for n in [*names, *calibration]})
    monkeypatch.setattr(gate, "load_cases", lambda path, device: listed)


def _ab(tmp_path, monkeypatch, *runs):
    fake = FakeMeasure(*runs)
    monkeypatch.setattr(gate, "measure", fake)
    _fake_listed(monkeypatch, list(runs[0][1].times))
    repo = _repo(tmp_path / "repo")
    head = head_revision(repo)
    return run_ab(head, resolve_base(repo, "HEAD"), GateConfig(rounds=ROUNDS)), fake


def test_ab_confirms_a_regression_in_fresh_processes(tmp_path, monkeypatch):
    times = {"scan": 1e-3, "conv": 1e-3}
    slow = {"scan": 1.3e-3, "conv": 1e-3}
    first = [synthetic_run(times), synthetic_run(slow, seed=5)]
    again = [synthetic_run(times, seed=11), synthetic_run(slow, seed=9)]
    result, fake = _ab(tmp_path, monkeypatch, first, again)
    assert fake.calls == [(["base", "head"], 0), (["base", "head"], 1)]  # both sides, new seed
    assert result.status == FAIL and result.exit_code == 1 and result.mode == AB
    row = {r.name: r for r in result.rows}["scan"]
    assert row.verdict == REGRESSION and row.confirmation.regressed
    assert set(result.samples) == {"first", "confirmation"}


def test_ab_drops_an_unconfirmed_suspect(tmp_path, monkeypatch):
    times = {"scan": 1e-3, "conv": 1e-3}
    fluke = [synthetic_run(times), synthetic_run({"scan": 1.3e-3, "conv": 1e-3}, seed=5)]
    calm = [synthetic_run(times, seed=11), synthetic_run(times, seed=9)]
    result, _ = _ab(tmp_path, monkeypatch, fluke, calm)
    assert result.status == PASS and result.exit_code == 0
    assert {r.name: r.verdict for r in result.rows}["scan"] == UNCONFIRMED


def test_ab_without_a_suspect_measures_once(tmp_path, monkeypatch):
    times = {"scan": 1e-3}
    result, fake = _ab(tmp_path, monkeypatch, [synthetic_run(times), synthetic_run(times, seed=3)])
    assert len(fake.calls) == 1 and result.status == PASS
    assert result.calibration_ratio == pytest.approx(1.0, abs=0.1)


def test_baseline_flow_confirms_against_the_stored_samples(tmp_path, monkeypatch):
    times = {"scan": 1e-3, "conv": 1e-3}
    save_baseline(tmp_path / "b.json", synthetic_run(times), "m", {"git_sha": "base"})
    slow = {"scan": 1.3e-3, "conv": 1e-3}
    fake = FakeMeasure([synthetic_run(slow, seed=5)], [synthetic_run(slow, seed=9)])
    monkeypatch.setattr(gate, "measure", fake)
    _fake_listed(monkeypatch, list(times))
    head = head_revision(_repo(tmp_path / "repo"))
    result = run_baseline(head, tmp_path / "b.json", GateConfig(rounds=ROUNDS))
    assert fake.calls == [(["head"], 0), (["head"], 1)]
    assert result.status == FAIL and result.base["sha"] == "base"


def test_incomparable_baseline_is_refused_before_measuring(tmp_path, monkeypatch):
    base = synthetic_run({"scan": 1e-3})
    base.settings["clock"] = CUDA_CLOCK
    save_baseline(tmp_path / "b.json", base, "m", {})
    monkeypatch.setattr(gate, "measure", FakeMeasure())  # raises if called: no runs
    _fake_listed(monkeypatch, ["scan"])
    head = head_revision(_repo(tmp_path / "repo"))
    with pytest.raises(UsageError, match="not comparable"):
        run_baseline(head, tmp_path / "b.json", GateConfig(rounds=ROUNDS))


# ---------------------------------------------------------------------- rounds and timing


class RecordingSide:
    """An in-process side: times nothing, records the order it was asked for."""

    def __init__(self, label: str, names: list[str], log: list):
        self.label, self.names, self.log = label, names, log

    def time(self, names):
        self.log.extend((self.label, n) for n in names)
        return {n: 1.0 for n in names}


def test_rounds_interleave_and_shuffle_both_sides():
    log: list = []
    sides = [
        RecordingSide("base", ["a", "b", "c"], log),
        RecordingSide("head", ["a", "b", "c"], log),
    ]
    samples = interleave(sides, rounds=6, seed=3)
    assert all(len(v) == 6 for s in samples for v in s.values())
    rounds = [log[i : i + 6] for i in range(0, 36, 6)]
    everything = sorted((s, n) for s in ("base", "head") for n in "abc")
    assert all(sorted(r) == everything for r in rounds)  # every pair once per round
    assert len({tuple(r) for r in rounds}) > 1  # in shuffled orders
    assert {r[0][0] for r in rounds} == {"base", "head"}  # either side may go first


def test_runner_times_cases_and_keeps_setup_errors():
    seen: list[str] = []

    def case(name):
        return Case(name, "kernel", lambda device: lambda: seen.append(name), repeat=3)

    def broken(device):
        raise AttributeError("module 'dimbench.ops' has no attribute 'new_op'")

    before = torch.get_num_threads()
    try:
        runner = Runner([case("a"), Case("new", "kernel", broken), case("c")], "cpu", warmup=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert runner.clock == "process_time"
    assert set(runner.workloads) == {"a", "c"}
    assert runner.errors == {
        "new": "AttributeError: module 'dimbench.ops' has no attribute 'new_op'"
    }
    seen.clear()
    times = runner.time(["c", "a"])
    assert list(times) == ["c", "a"] and all(t >= 0 for t in times.values())
    assert seen == ["c"] * 3 + ["a"] * 3


def test_cuda_clock_uses_events(monkeypatch):
    """The CUDA timer on a fake torch.cuda.Event: events around the repeats, ms -> s per call."""
    recorded = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            recorded.append(self)
            self.t = len(recorded)

        def synchronize(self):
            assert self.t is not None

        def elapsed_time(self, end):
            return 40.0  # ms

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    clock, time_call = timer("cuda")
    calls = []
    assert clock == CUDA_CLOCK
    assert time_call(lambda: calls.append(1), 4) == pytest.approx(0.01)
    assert len(calls) == 4 and len(recorded) == 2


def test_gate_cases_cover_the_kernels_and_run():
    cases = gate_cases("cpu")
    names = {c.name for c in cases}
    assert {"scan/forward[cpu]", "scan/forward+backward[cpu]"} <= names
    assert {"attention/forward[sdpa]", "causal-conv/forward[cpu]"} <= names
    assert {"dim-block/forward+backward", "dit-block/forward+backward"} <= names
    assert len(names) == len(cases)
    cuda = {c.name for c in gate_cases("cuda")}
    assert {"scan/forward[triton]", "scan/forward+backward[triton]"} <= cuda
    for case in [*cases, *CALIBRATION]:
        case.setup(torch.device("cpu"))()  # builds and runs once


# ---------------------------------------------------------------------- revisions and worktrees


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


FAKE_CASES = textwrap.dedent(
    '''
    """Synthetic gate cases: Python loops, one of them scaled by the side's dimbench.SLOW."""
    from dataclasses import dataclass

    N = 20000


    @dataclass(frozen=True)
    class Case:
        name: str
        group: str
        setup: object
        repeat: int = 1

        @property
        def signature(self):
            return f"repeat={self.repeat}"


    def spin(n):
        def run():
            s = 0
            for i in range(n):
                s += i
            return s

        return run


    def scaled(device):
        import dimbench

        return spin(int(N * dimbench.SLOW))


    def gate_cases(device):
        fixed = Case("spin/fixed", "kernel", lambda d: spin(N))
        return [Case("spin/scaled", "kernel", scaled), fixed]


    CALIBRATION = (Case("calib/spin", "calibration", lambda d: spin(N)),)
    '''
)


def _repo(path: Path, slow: float = 1.0, commits: int = 2) -> Path:
    """A tiny dimbench source tree in git: dimbench.SLOW and the synthetic cases."""
    (path / "dimbench" / "regress").mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    (path / "dimbench" / "regress" / "cases.py").write_text(FAKE_CASES)
    for i in range(commits):
        (path / "dimbench" / "__init__.py").write_text(f"SLOW = {slow}\nCOMMIT = {i}\n")
        _git(path, "add", "-A")
        _git(path, "commit", "-q", "-m", f"commit {i}")
    return path


def test_source_tree_and_head_revision(tmp_path):
    repo = _repo(tmp_path / "repo")
    (repo / "sub").mkdir()
    assert source_tree(repo / "sub") == repo.resolve()
    head = head_revision(repo)
    assert head.sha == _git(repo, "rev-parse", "HEAD") and not head.dirty
    (repo / "dimbench" / "__init__.py").write_text("SLOW = 2.0\n")
    dirty = head_revision(repo)
    assert dirty.dirty and dirty.label == dirty.sha[:12] + "+dirty"
    with pytest.raises(UsageError, match="not a git checkout"):
        source_tree(tmp_path)
    (tmp_path / "other").mkdir()
    _git(tmp_path / "other", "init", "-q")
    with pytest.raises(UsageError, match="not a dimbench source tree"):
        source_tree(tmp_path / "other")


def test_default_base_is_head_parent_or_upstream_merge_base(tmp_path):
    repo = _repo(tmp_path / "repo", commits=3)
    base = resolve_base(repo, None)
    assert base.sha == _git(repo, "rev-parse", "HEAD~1") and base.rev == "HEAD~1"
    # a branch two commits ahead of its upstream: the merge base, not HEAD~1
    _git(repo, "checkout", "-q", "-b", "feature", "--track", "main")
    for i in range(2):
        (repo / "dimbench" / "__init__.py").write_text(f"SLOW = 1.0\nFEATURE = {i}\n")
        _git(repo, "commit", "-q", "-am", f"feature {i}")
    base = resolve_base(repo, None)
    assert base.sha == _git(repo, "rev-parse", "main") and "merge base with main" in base.rev
    # up to date with the upstream (CI's fresh clone of main): back to HEAD~1
    _git(repo, "checkout", "-q", "main")
    _git(repo, "merge", "-q", "--ff-only", "feature")
    _git(repo, "branch", "-q", "--set-upstream-to", "feature")
    assert resolve_base(repo, None).sha == _git(repo, "rev-parse", "HEAD~1")
    assert resolve_base(repo, "HEAD~2").sha == _git(repo, "rev-parse", "HEAD~2")


@pytest.mark.parametrize("rev", ["no-such-branch", "HEAD~99", "--all", ""])
def test_unknown_base_is_a_usage_error(tmp_path, rev):
    repo = _repo(tmp_path / "repo")
    with pytest.raises(UsageError, match="unknown revision"):
        resolve_base(repo, rev)


def test_single_commit_needs_a_base(tmp_path):
    repo = _repo(tmp_path / "repo", commits=1)
    with pytest.raises(UsageError, match="no parent commit"):
        resolve_base(repo, None)
    assert resolve_base(repo, "HEAD").sha == _git(repo, "rev-parse", "HEAD")
    shallow = tmp_path / "shallow"
    _git(tmp_path, "clone", "-q", "--depth", "1", f"file://{_repo(tmp_path / 'two')}", str(shallow))
    with pytest.raises(UsageError, match="shallow clone"):
        resolve_base(shallow, None)


def test_base_without_dimbench_is_a_usage_error(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README").write_text("before dimbench\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "readme")
    shutil.copytree(_repo(tmp_path / "src") / "dimbench", repo / "dimbench")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "dimbench")
    with pytest.raises(UsageError, match="no dimbench package"):
        resolve_base(repo, None)


def _worktrees(repo: Path) -> list[str]:
    out = _git(repo, "worktree", "list", "--porcelain")
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def test_worktree_is_removed_also_on_interrupt(tmp_path):
    repo = _repo(tmp_path / "repo")
    base = resolve_base(repo, None)
    with checkout(base, tmp_path) as tree:
        assert (tree.root / "dimbench" / "__init__.py").read_text().startswith("SLOW = 1.0")
        assert "COMMIT = 0" in (tree.root / "dimbench" / "__init__.py").read_text()
        assert len(_worktrees(repo)) == 2
    assert not tree.root.exists() and len(_worktrees(repo)) == 1
    with pytest.raises(KeyboardInterrupt), checkout(base, tmp_path) as tree:
        raise KeyboardInterrupt
    assert not tree.root.exists() and len(_worktrees(repo)) == 1


# ---------------------------------------------------------------------- workers


SIDE_CASES = textwrap.dedent(
    '''
    """Checks where the side's packages come from, and runs its C++ scan once."""
    from dataclasses import dataclass
    from pathlib import Path


    @dataclass(frozen=True)
    class Case:
        name: str
        group: str
        setup: object
        repeat: int = 1

        @property
        def signature(self):
            return ""


    def where(device):
        import importlib.util

        import dimbench

        root = Path(dimbench.__file__).resolve().parents[1]
        for name in ("dimbench.models.dit", "dimbench.ops.scan", "dimbench.bench.spec"):
            origin = importlib.util.find_spec(name).origin  # imports only the parents
            if root not in Path(origin).resolve().parents:
                raise AssertionError(f"{name} from {origin}, not {root}")
        return lambda: None


    def scan(device):
        import torch
        from dimbench.ops import selective_scan

        u = torch.randn(1, 16, 8)
        A = -torch.ones(16, 4)
        B = C = torch.randn(1, 4, 8)
        return lambda: selective_scan(u, u, A, B, C, backend="cpu")


    def gate_cases(device):
        return [Case("where", "kernel", where), Case("scan", "kernel", scan)]


    CALIBRATION = (Case("calib", "calibration", lambda d: lambda: None),)
    '''
)


def _copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "dimbench", dest / "dimbench", ignore=ignore)
    return dest


def test_each_side_imports_its_own_tree_and_builds_its_own_kernel(tmp_path, monkeypatch):
    """Two copies of this tree, one with an edited C++ source: each worker's dimbench (its
    models and suites included) comes from its copy, and each loads its own .so."""
    monkeypatch.setenv("DIMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    a, b = _copy_tree(tmp_path / "a"), _copy_tree(tmp_path / "b")
    with open(b / "dimbench" / "ops" / "csrc" / "selective_scan.cpp", "a") as f:
        f.write("\n// an edit: another source, another cache key\n")
    cases = tmp_path / "side_cases.py"
    cases.write_text(SIDE_CASES)
    sides = [Side(label, root, cases, tmp_path) for label, root in (("a", a), ("b", b))]
    with running(sides):
        for side, root in zip(sides, (a, b), strict=True):
            assert Path(side.info["dimbench_file"]) == root.resolve() / "dimbench" / "__init__.py"
            assert side.setup["errors"] == {}, side.setup["errors"]
            assert sorted(side.names) == ["calib", "scan", "where"]
            assert len(side.time(["scan", "where"])) == 2
        kernels = [side.setup["kernels"] for side in sides]
    assert all(len(k) == 1 and k[0].startswith(str(tmp_path / "cache")) for k in kernels)
    assert kernels[0] != kernels[1]
    assert all(side.proc is None for side in sides)  # closed


ENV_CASES = SIDE_CASES.split("def where(device):")[0] + textwrap.dedent(
    """
    def marked(device):
        import os

        if os.environ.get("DIMBENCH_TEST_SIDE_MARK"):
            raise RuntimeError("marked " + os.environ["DIMBENCH_TEST_SIDE_MARK"])
        return lambda: None


    def gate_cases(device):
        return [Case("marked", "kernel", marked)]


    CALIBRATION = (Case("calib", "calibration", lambda d: lambda: None),)
    """
)


def test_head_env_is_set_in_the_head_workers_only(tmp_path, monkeypatch):
    """$DIMBENCH_REGRESS_HEAD_ENV (the sensitivity check's way to slow one side down) reaches
    the head's worker and not the base's; a malformed one is a one-line UsageError."""
    monkeypatch.setenv(gate.HEAD_ENV, "DIMBENCH_TEST_SIDE_MARK=head")
    config = GateConfig(rounds=5)
    assert config.head_env == (("DIMBENCH_TEST_SIDE_MARK", "head"),)
    cases = tmp_path / "env_cases.py"
    cases.write_text(ENV_CASES)
    tree = Revision(REPO, "0" * 40)
    listed = gate.load_cases(cases, "cpu")
    base, head = gate.measure([("base", tree), ("head", tree)], cases, listed, config, 0, tmp_path)
    assert base.errors == {} and "marked head" in head.errors["marked"]
    assert head.samples.settings["head_env"] == {"DIMBENCH_TEST_SIDE_MARK": "head"}
    monkeypatch.setenv(gate.HEAD_ENV, "NOT-A-PAIR")
    with pytest.raises(UsageError, match="NAME=VALUE"):
        GateConfig()


def test_an_old_layout_base_imports_its_top_level_packages(tmp_path):
    """A base revision from before the one-package layout kept suites/ and baselines/ beside
    dimbench/ (installed through package-dir): its checkout links them into the package."""
    from dimbench.regress.worktree import link_old_layout

    old = tmp_path / "old"
    for name, text in (("dimbench", ""), ("suites", "WHERE = 'suites'\n"), ("baselines", "")):
        (old / name).mkdir(parents=True)
        (old / name / "__init__.py").write_text(text)
    link_old_layout(old)
    link_old_layout(old)  # idempotent
    code = "import dimbench.suites as s, dimbench.baselines; print(s.WHERE, s.__file__)"
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=old,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(old)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "suites" and str(old) in res.stdout


def test_a_side_that_cannot_import_reports_its_error(tmp_path):
    broken = tmp_path / "broken"
    (broken / "dimbench").mkdir(parents=True)
    (broken / "dimbench" / "__init__.py").write_text("raise RuntimeError('half a refactor')\n")
    side = Side("base", broken, tmp_path / "unused.py", tmp_path)
    with pytest.raises(WorkerError, match="half a refactor"), running([side]):
        pass


# ---------------------------------------------------------------------- the flow, for real


def test_ab_flow_on_synthetic_cases(tmp_path):
    """Real workers on a tiny repository: the head (uncommitted: twice the work in one case)
    against HEAD fails; HEAD against HEAD passes; the base's worktree is gone afterwards."""
    repo = _repo(tmp_path / "repo")
    base = resolve_base(repo, "HEAD")
    same = run_ab(head_revision(repo), base, GateConfig(rounds=8, threshold=0.5))
    assert same.status == PASS, same.rows
    (repo / "dimbench" / "__init__.py").write_text("SLOW = 2.5\n")
    slow = run_ab(head_revision(repo), base, GateConfig(rounds=8))
    assert slow.status == FAIL, slow.rows
    rows = {r.name: r for r in slow.rows}
    assert rows["spin/scaled"].verdict == REGRESSION and rows["spin/scaled"].ratio > 1.8
    assert rows["spin/fixed"].verdict in (OK, NOISY, FASTER)
    assert slow.head["dirty"] and slow.base["sha"] == base.sha
    assert len(slow.base["workers"]) == 2  # first run and confirmation: fresh processes
    assert len(_worktrees(repo)) == 1


def test_interrupt_mid_run_ends_the_workers_and_removes_the_worktree(tmp_path, monkeypatch):
    repo = _repo(tmp_path / "repo")
    workers = []

    def interrupted(sides, rounds, seed, on_round=None):
        workers.extend(side.proc for side in sides)
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, which the CLI turns into one)

    monkeypatch.setattr(gate, "interleave", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ab(head_revision(repo), resolve_base(repo, None), GateConfig(rounds=5))
    assert len(workers) == 2 and all(proc.poll() is not None for proc in workers)
    assert len(_worktrees(repo)) == 1


# ---------------------------------------------------------------------- CLI


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["regress", *args])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_cli_exit_codes_and_json(tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    report = tmp_path / "out" / "report.json"
    args = ["--rounds", "8", "--threshold", "0.5", "--json", str(report)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    assert "spin/scaled" in out and "gate took" in out and "pass" in out
    doc = json.loads(report.read_text())
    assert doc["status"] == PASS and doc["exit_code"] == 0 and doc["mode"] == AB
    assert (
        doc["base"]["sha"] == _git(repo, "rev-parse", "HEAD~1") and doc["base"]["rev"] == "HEAD~1"
    )
    assert doc["head"]["sha"] == _git(repo, "rev-parse", "HEAD") and not doc["head"]["dirty"]
    assert doc["base"]["workers"][0]["dimbench_file"].endswith("dimbench/__init__.py")
    assert doc["head"]["workers"][0]["dimbench_file"] == str(
        repo.resolve() / "dimbench" / "__init__.py"
    )
    assert doc["machine"]["machine_class"] and doc["machine"]["cpus"] >= 1
    assert len(doc["samples"]["first"]["head"]["times"]["spin/scaled"]) == 8
    assert {r["name"] for r in doc["rows"]} == {"spin/scaled", "spin/fixed"}

    (repo / "dimbench" / "__init__.py").write_text("SLOW = 2.5\n")
    code, out, _ = run_cli(["--rounds", "8", "--base", "HEAD", "--json", str(report)], capsys)
    assert code == 1, out
    doc = json.loads(report.read_text())
    assert doc["status"] == FAIL and doc["head"]["label"].endswith("+dirty")
    assert len(_worktrees(repo)) == 1


def test_cli_update_then_compare_with_the_stored_baseline(tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    stored = tmp_path / "baselines"
    code, out, _ = run_cli(["--baseline", str(stored), "--rounds", "8", "--update"], capsys)
    assert code == 0 and UPDATED in out and "spin/scaled" in out
    (written,) = stored.glob("*.json")
    assert load_baseline(written).commit == _git(repo, "rev-parse", "HEAD")[:12]
    report = tmp_path / "report.json"
    args = ["--baseline", str(written), "--rounds", "8", "--threshold", "5", "--json", str(report)]
    code, out, _ = run_cli(args, capsys)
    assert code == 0, out
    doc = json.loads(report.read_text())
    assert doc["status"] == PASS and doc["mode"] == "baseline"
    assert len(doc["samples"]["first"]["head"]["times"]["spin/scaled"]) == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "0"], "--threshold"),
        (["--alpha", "1.5"], "--alpha"),
        (["--rounds", "2"], "--rounds"),
        (["--device", "tpu"], "--device"),
        (["--base", "no-such-rev"], "unknown revision"),
        (["--base", "HEAD", "--update"], "not both"),
        (["--baseline", "/nonexistent/gate.json"], "no such file"),
        (["--update", "--baseline", "/proc/gate.json"], "cannot write"),
        (["--update", "--baseline", "README/gate.json"], "is a file"),
        (["--json", "/proc/self/report.json"], "cannot write"),
    ],
)
def test_cli_bad_input_exits_2(args, message, tmp_path, monkeypatch, capsys):
    repo = _repo(tmp_path / "repo")
    (repo / "README").write_text("a file, not a folder\n")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(gate, "measure", FakeMeasure())  # nothing may be measured
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_outside_a_checkout_and_with_one_commit_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([], capsys)
    assert code == 2 and "not a git checkout" in err and len(err.strip().splitlines()) == 1
    monkeypatch.chdir(_repo(tmp_path / "one", commits=1))
    code, _, err = run_cli([], capsys)
    assert code == 2 and "--base REV" in err and len(err.strip().splitlines()) == 1


def test_cli_malformed_baseline_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_repo(tmp_path / "repo"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli(["--baseline", str(bad)], capsys)
    assert code == 2 and "cannot read baseline" in err


def test_cli_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["regress", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "merge base with the upstream" in out and "HEAD~1" in out
    assert "results/baselines/<machine-class>.json" in out
    assert "[default: 0.08]" in out
