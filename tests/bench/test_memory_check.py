"""Configurations predicted not to fit become too_big rows, before anything runs."""

from __future__ import annotations

import time

import pytest

from dimbench.bench import get_suite, memory_check
from dimbench.bench.memory_check import Capacity, too_big
from dimbench.bench.spec import Sweep
from dimbench.results import ResultStore

MB = 1e6


def sweep(resolutions, suite="throughput", **kw) -> Sweep:
    return Sweep(get_suite(suite), ["DiT-T/2"], resolutions=resolutions, **kw).validate()


def test_what_cannot_fit_is_refused_from_the_largest_down():
    seen = []

    def predict(cfg):
        seen.append(cfg.image_size)
        return cfg.image_size * MB  # 1 MB per px

    configs = sweep([32, 64, 128, 256]).configs()
    refused = too_big(configs, Capacity(int(100 * MB), "100 MB of test"), predict)
    assert sorted(c.image_size for c in refused) == [128, 256]
    assert seen == [256, 128, 64]  # 64 fits, so 32 does too: not recorded
    result = refused[next(c for c in refused if c.image_size == 256)]
    assert result["status"] == "too_big"
    assert result["metrics"]["predicted_peak_mem_mb"] == pytest.approx(256)
    assert "256 MB > 100 MB (100 MB of test)" in result["error"]


def test_an_unrecordable_configuration_is_not_refused():
    def predict(cfg):
        raise RuntimeError("fake tensors cannot run this")

    assert too_big(sweep([32]).configs(), Capacity(0, "none"), predict) == {}


def test_the_prediction_at_100000_px_is_quick_and_beyond_this_machine():
    cfg = sweep([100000]).configs()[0]
    memory_check.predicted_peak_bytes(sweep([32]).configs()[0])  # the recorder's first call
    t0 = time.perf_counter()
    refused = too_big([cfg])
    seconds = time.perf_counter() - t0
    assert refused[cfg]["metrics"]["predicted_peak_mem_mb"] > 100_000  # 39M tokens
    assert seconds < 5  # under a second on an idle machine; shared CI runners are slower
    room = memory_check.device_capacity("cpu")
    assert 0 < room.bytes and "RAM" in room.source or "cgroup" in room.source


def fake_worker(calls):
    def run_isolated(cfg, suite=None, env=None, stop=None):
        calls.append(cfg.image_size)
        return {"status": "oom", "error": "fake worker", "wall_s": 0.0}

    return run_isolated


def test_run_sweep_writes_too_big_rows_and_launches_nothing_for_them(tmp_path, monkeypatch):
    from dimbench.bench import runner

    calls = []
    monkeypatch.setattr(runner, "run_isolated", fake_worker(calls))
    monkeypatch.setattr(
        memory_check, "device_capacity", lambda device: Capacity(int(50 * MB), "50 MB of test")
    )
    s = sweep([32, 100000])
    df = runner.run_sweep(s, tmp_path, show_progress=False)
    assert calls == [32]
    by_res = df.set_index("image_size")
    assert by_res.loc[100000, "status"] == "too_big"
    assert by_res.loc[100000, "predicted_peak_mem_mb"] > 100_000
    assert str(by_res.loc[32, "predicted_peak_mem_mb"]) == "nan"
    statuses = runner.summary_table(s.suite, df).columns[-1]._cells
    assert set(statuses) == {"[yellow]too_big[/yellow]", "[yellow]oom[/yellow]"}  # alike

    # a rerun keeps it, as an oom row; without the check it is measured again
    runner.run_sweep(s, tmp_path, show_progress=False)
    assert calls == [32]
    runner.run_sweep(sweep([32, 100000], memory_check=False), tmp_path, show_progress=False)
    assert calls == [32, 100000]
    rows = ResultStore(tmp_path, s.suite.schema).rows()
    assert [r["status"] for r in rows] == ["too_big", "oom", "oom"]


@pytest.mark.parametrize("suite", ["throughput", "memory", "profile"])
def test_the_suites_that_launch_workers_have_the_predicted_column(suite):
    assert "predicted_peak_mem_mb" in get_suite(suite).schema.columns


@pytest.mark.parametrize("mode", ["forward", "train"])
def test_a_deep_model_is_predicted_from_two_shallow_recordings(mode, monkeypatch):
    cfg = Sweep(get_suite("throughput"), ["DiM-T/2"], resolutions=[64], modes=[mode])
    (cfg,) = cfg.validate().configs()
    depths = []
    record = memory_check._recorded_peak
    monkeypatch.setattr(
        memory_check,
        "_recorded_peak",
        lambda c, overrides=None: depths.append(overrides) or record(c, overrides),
    )
    predicted = memory_check.predicted_peak_bytes(cfg)
    assert depths == [{"depth": 3}, {"depth": 5}]  # DiM-T/2 has 7 blocks: odd depths only
    assert predicted == pytest.approx(record(cfg), rel=5e-3)


def test_a_model_too_shallow_to_extrapolate_is_recorded_whole(monkeypatch):
    (cfg,) = sweep([64]).configs()  # DiT-T/2: 2 blocks, no shallower pair to extrapolate from
    calls = []
    monkeypatch.setattr(
        memory_check, "_recorded_peak", lambda c, overrides=None: calls.append(overrides) or 1
    )
    memory_check.predicted_peak_bytes(cfg)
    assert calls == [None]
