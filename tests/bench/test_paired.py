"""Paired cells (``dimbench.bench.cell``): grouping, the rounds over real pipes with fake
workers (fast: no torch in them), a worker dying mid-cell, resume, ``--unpaired``, ratios.csv."""

import csv
import json
import os
import sys
import textwrap

import pytest

from dimbench.bench import cell, runner
from dimbench.bench.registry import get_suite
from dimbench.bench.spec import Config
from dimbench.cli import main
from dimbench.results import ResultStore

# Speaks the cell worker's protocol: a step of MS milliseconds (time.sleep), or a SIGKILL on
# step DIE (the kernel's OOM killer, as the parent sees it).
FAKE_WORKER = textwrap.dedent("""\
    import json, os, signal, sys, time
    ms, die = float(sys.argv[1]), int(sys.argv[2])
    samples = []
    for line in sys.stdin:
        op = json.loads(line)["op"]
        if op == "exit":
            break
        if op == "setup":
            reply = {"ready": True}
        elif op == "time":
            if len(samples) + 1 == die:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(ms / 1e3)
            samples.append(ms)
            reply = {"seconds": ms / 1e3}
        else:
            med = sorted(samples)[len(samples) // 2]
            metrics = {"imgs_per_s": 1e3 / med, "latency_ms": med, "repeats": len(samples),
                       "imgs_per_s_ci_lo": 1e3 / max(samples),
                       "imgs_per_s_ci_hi": 1e3 / min(samples)}
            reply = {"result": {"status": "ok", "error": None, "metrics": metrics,
                                "raw": {"timing": {"samples_ms": samples}}}}
        print(json.dumps(reply), flush=True)
""")


def cli(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture
def fake_workers(tmp_path, monkeypatch):
    """Cell workers replaced by FAKE_WORKER: {model: (step ms, step it dies on or 0)}; returns
    the configurations each cell was given and each lone configuration run_isolated got."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    behaviour: dict[str, tuple[float, int]] = {}
    log = {"cells": [], "alone": []}

    def launch(self):
        log.setdefault("slot_env", []).append((self.cfg.model, self.cfg.image_size, self.slot_env))
        ms, die = behaviour.get(self.cfg.model, (2.0, 0))
        self.start([sys.executable, str(script), str(ms), str(die)], {}, self.work_dir)

    real_measure_cell = runner.measure_cell

    def measure_cell(cfgs, suite, on_round=None, env=None, stop=None):
        log["cells"].append([c.model for c in cfgs])
        return real_measure_cell(cfgs, suite, on_round, env, stop)

    def alone(cfg, suite=None, env=None, stop=None):
        log["alone"].append(cfg.model)
        metrics = {"imgs_per_s": 100.0, "latency_ms": 10.0, "repeats": cfg.repeats}
        raw = {"timing": {"samples_ms": [10.0] * cfg.repeats}}
        return {"status": "ok", "error": None, "metrics": metrics, "raw": raw, "wall_s": 1.0}

    monkeypatch.setattr(cell.CellWorker, "launch", launch)
    monkeypatch.setattr(runner, "measure_cell", measure_cell)
    monkeypatch.setattr(runner, "run_isolated", alone)
    return behaviour, log


def sweep_args(out, *models, res=("32",), extra=()):
    args = ["run", "throughput", "--models", *models, "--res", *res, "--min-rounds", "3"]
    return [
        *args,
        "--repeats",
        "4",
        "--budget",
        "0",
        "--no-memory-check",
        "--out",
        str(out),
        *extra,
    ]


def rows_of(out):
    return ResultStore(out, get_suite("throughput").schema).rows()


def test_cells_group_by_everything_but_the_model():
    a = Config("throughput", "DiM-T/2", 32, scan_backend="cpu")
    b = Config("throughput", "DiT-T/2", 32, attn_backend="sdpa")
    c = Config("throughput", "DiM-T/2", 64, scan_backend="cpu")
    d = Config("throughput", "DiT-T/2", 32, attn_backend="sdpa", dtype="bf16")
    assert cell.cells([a, c, b, d]) == [[a, b], [c], [d]]


def test_a_paired_cell_interleaves_rounds_and_writes_rows_and_ratios(tmp_path, fake_workers):
    behaviour, log = fake_workers
    behaviour.update({"DiM-T/2": (4.0, 0), "DiT-T/2": (2.0, 0)})
    out = tmp_path / "out"
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", res=("32", "64"))) == 0
    assert {k: log[k] for k in ("cells", "alone")} == {
        "cells": [["DiM-T/2", "DiT-T/2"]] * 2, "alone": [],
    }  # fmt: skip
    rows = rows_of(out)
    assert [(r["model"], r["status"], r["paired"]) for r in rows] == [
        ("DiM-T/2", "ok", "true"), ("DiT-T/2", "ok", "true"),
    ] * 2  # fmt: skip
    # the budget is spent at once and the samples are tight: min rounds, not max
    assert {r["repeats"] for r in rows} == {"3"}
    samples = [json.loads(x) for x in (out / "throughput.samples.jsonl").read_text().splitlines()]
    assert samples[0]["cell"]["id"] == samples[1]["cell"]["id"] != samples[2]["cell"]["id"]
    with (out / "ratios.csv").open() as f:
        ratios = list(csv.DictReader(f))
    got = [(r["model"], r["baseline"], r["image_size"], r["rounds"], r["paired"]) for r in ratios]
    assert got == [
        ("DiM-T/2", "DiT-T/2", "32", "3", "true"), ("DiM-T/2", "DiT-T/2", "64", "3", "true"),
    ]  # fmt: skip
    for r in ratios:  # 2 ms over 4 ms, give or take the sleep's jitter
        assert float(r["ratio_ci_lo"]) <= float(r["ratio"]) <= float(r["ratio_ci_hi"])
        assert float(r["ratio"]) == pytest.approx(0.5, rel=0.3)


def test_a_worker_killed_mid_cell_is_its_row_and_the_others_go_on(tmp_path, fake_workers):
    behaviour, _ = fake_workers
    behaviour.update({"DiT-T/2": (2.0, 2)})  # SIGKILLed in its second timed step
    out = tmp_path / "out"
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", "U-ViT-T/2")) == 0
    status = {r["model"]: (r["status"], r["repeats"], r["error"]) for r in rows_of(out)}
    assert status["DiT-T/2"][0] == "oom" and "SIGKILL" in status["DiT-T/2"][2]
    assert status["DiM-T/2"][:2] == status["U-ViT-T/2"][:2] == ("ok", "3")


def test_resume_measures_only_the_missing_models_of_a_cell(tmp_path, fake_workers):
    behaviour, log = fake_workers
    behaviour.update({"DiT-T/2": (2.0, 1), "U-ViT-T/2": (2.0, 1)})  # both die: rows oom
    out = tmp_path / "out"
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", "U-ViT-T/2")) == 0
    # oom is final: a rerun measures nothing; timeouts and errors are retried
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", "U-ViT-T/2")) == 0
    assert log["cells"] == [["DiM-T/2", "DiT-T/2", "U-ViT-T/2"]]
    store = ResultStore(out, get_suite("throughput").schema)
    text = store.csv_path.read_text().replace(",oom,", ",error,")
    store.csv_path.write_text(text)
    behaviour.clear()
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", "U-ViT-T/2")) == 0
    assert log["cells"][1:] == [["DiT-T/2", "U-ViT-T/2"]] and log["alone"] == []
    # one model missing: a cell of one has nothing to pair with and runs alone
    text = store.csv_path.read_text().splitlines()
    store.csv_path.write_text("\n".join(text[:-1]) + "\n")  # U-ViT-T/2's row gone
    assert cli(sweep_args(out, "DiM-T/2", "DiT-T/2", "U-ViT-T/2")) == 0
    assert log["alone"] == ["U-ViT-T/2"]
    assert rows_of(out)[-1]["paired"] == "false"


def test_unpaired_runs_one_process_per_configuration_in_the_old_order(tmp_path, fake_workers):
    _, log = fake_workers
    out = tmp_path / "out"
    args = sweep_args(out, "DiM-T/2", "DiT-T/2", res=("32", "64"), extra=("--unpaired",))
    assert cli(args) == 0
    assert log == {"cells": [], "alone": ["DiM-T/2", "DiM-T/2", "DiT-T/2", "DiT-T/2"]}
    assert {r["paired"] for r in rows_of(out)} == {"false"}
    with (out / "ratios.csv").open() as f:  # ratios of medians, each side resampled alone
        assert {r["paired"] for r in csv.DictReader(f)} == {"false"}


def test_min_rounds_above_repeats_is_capped_and_below_one_refused(tmp_path, fake_workers, capsys):
    _, log = fake_workers
    out = tmp_path / "out"
    args = sweep_args(out, "DiM-T/2", extra=("--repeats", "2"))  # min 3, at most 2
    assert cli(args) == 0 and rows_of(out)[0]["repeats"] == "2"
    assert cli([*sweep_args(tmp_path / "o2", "DiM-T/2"), "--min-rounds", "0"]) == 2
    assert "--min-rounds must be >= 1" in capsys.readouterr().err


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_with_two_workers_each_cell_runs_on_one_slot_of_its_own(tmp_path, fake_workers):
    behaviour, log = fake_workers
    out = tmp_path / "out"
    args = sweep_args(out, "DiM-T/2", "DiT-T/2", res=("32", "64"), extra=("--workers", "2"))
    assert cli(args) == 0
    slots = {}
    for _model, res, env in log["slot_env"]:
        slots.setdefault(res, set()).add(env["DIMBENCH_CPUS"])
    assert all(len(s) == 1 for s in slots.values())  # both models of a cell: one core set
    assert slots[32] != slots[64]  # the two cells: one on each
    rows = rows_of(out)
    by_res = {}
    for r in rows:
        by_res.setdefault(r["image_size"], set()).add(r["slot"])
    assert all(len(s) == 1 and s != {""} for s in by_res.values())
    assert {r["paired"] for r in rows} == {"true"}
