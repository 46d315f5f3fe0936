"""dimbench train-compare: the smoke preset end to end, resume, budgets, matching, errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from dimbench.cli import main
from dimbench.errors import UsageError
from dimbench.train.compare import (
    CompareConfig,
    CompareRun,
    ModelRun,
    PlannedModel,
    evaluation_points,
    parse_budget,
    resolve,
    run_compare,
)

DETERMINISTIC = (
    "step", "images_seen", "train_flops", "train_loss", "heldout_loss", "heldout_loss_raw",
    "heldout_by_t", "fid", "swd", "n_gen", "n_ref",
)  # fmt: skip


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of the smoke preset through the CLI (shared by the tests below)."""
    out = tmp_path_factory.mktemp("smoke")
    cache = tmp_path_factory.mktemp("fid-cache")
    with pytest.raises(SystemExit) as e:
        main(["train-compare", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache),
              "--no-progress"])  # fmt: skip
    assert e.value.code == 0
    return out, cache


def test_smoke_preset_writes_csv_plots_and_metadata(smoke):
    out, _ = smoke
    rows = read_csv(out / "train_compare.csv")
    labels = {r["label"] for r in rows}
    assert {r["model"] for r in rows} == {"DiM-T/2", "DiT-T/2", "U-ViT-T/2"}
    assert len(rows) == 3 * 3  # step 0 and two points of the 6-step budget, per model
    for label in labels:
        mine = sorted((r for r in rows if r["label"] == label), key=lambda r: int(r["point"]))
        assert [int(r["step"]) for r in mine] == [0, 3, 6]
        assert [int(r["images_seen"]) for r in mine] == [0, 12, 24]
        flops = [float(r["train_flops"]) for r in mine]
        assert flops[0] == 0 and flops[2] == pytest.approx(2 * flops[1])
        assert float(mine[-1]["wall_seconds"]) > 0
        assert float(mine[-1]["heldout_loss"]) < float(mine[0]["heldout_loss"])  # it learns
        assert json.loads(mine[-1]["heldout_by_t"]).keys() == {"166", "500", "833"}
        # quality at the last point only, with its sample counts
        assert [bool(r["fid"]) for r in mine] == [False, False, True]
        assert float(mine[-1]["fid"]) > 0 and float(mine[-1]["swd"]) > 0
        assert (mine[-1]["n_gen"], mine[-1]["n_ref"]) == ("6", "12")
    # --match flops: forward FLOPs per image within a few % of the first model's
    gflops = {r["model"]: float(r["gflops_per_image"]) for r in rows}
    for name in ("DiT-T/2", "U-ViT-T/2"):
        assert gflops[name] == pytest.approx(gflops["DiM-T/2"], rel=0.05)
    for name in ("train_compare.png", "train_compare.svg", "summary.md"):
        assert (out / name).stat().st_size > 0
    meta = json.loads((out / "train_compare.json").read_text())
    assert meta["plan"]["preset"] == "smoke" and meta["plan"]["objective"]["loss"] == "mse"
    assert [m["match"]["by"] for m in meta["models"][1:]] == ["flops", "flops"]
    assert meta["runs"][-1]["finished"] and "train-compare" in meta["runs"][-1]["command"]
    assert meta["quality"]["n_gen"] == 6 and meta["quality"]["n_ref"] == 12
    # each model's checkpoint is a normal trainer checkpoint at the last step
    ckpt = torch.load(out / "dit-t-2" / "seed-0" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["meta"]["model_overrides"]["learn_sigma"] is False
    assert "At equal training FLOPs" in (out / "summary.md").read_text()


def test_interrupted_run_resumes_to_the_same_numbers(smoke, tmp_path, monkeypatch):
    """Killed mid-training of the second model, rerun: every model continues from its last
    checkpoint and ends with the numbers of the uninterrupted run (which trained interleaved;
    this one trains the models one after another)."""
    from dimbench.train.trainer import Trainer

    ref_out, cache = smoke
    cfg = dict(preset="smoke", out=str(tmp_path), order="sequential", cache_dir=str(cache),
               progress=False)  # fmt: skip
    calls = {"n": 0}
    original = Trainer.train_step

    def dying_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6 + 5:  # the 5th step of the second model, between its points
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_compare(CompareConfig(**cfg))
    partial = read_csv(tmp_path / "train_compare.csv")
    assert len(partial) == 3 + 2  # DiM-T/2 done, DiT-T/2 at points 0 and 1
    monkeypatch.setattr(Trainer, "train_step", original)
    run_compare(CompareConfig(**cfg))
    rows = read_csv(tmp_path / "train_compare.csv")
    key = lambda r: (r["label"], int(r["point"]))  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, read_csv(ref_out / "train_compare.csv")))
    ref = {key(r): r for r in read_csv(ref_out / "train_compare.csv")}
    for r in rows:
        for col in DETERMINISTIC:
            assert r[col] == ref[key(r)][col], (key(r), col)
    meta = json.loads((tmp_path / "train_compare.json").read_text())
    assert len(meta["runs"]) == 2 and meta["runs"][-1]["finished"]
    # a third run finds everything done and changes nothing
    run_compare(CompareConfig(**cfg))
    assert len(read_csv(tmp_path / "train_compare.csv")) == len(rows)
    # other settings into the same folder are refused
    with pytest.raises(UsageError, match="other settings"):
        run_compare(CompareConfig(**{**cfg, "budget": "8"}))


def test_dit_trains_with_the_trainers_label_dropout_only(tmp_path):
    cfg = resolve(CompareConfig(preset="smoke", models=["DiT-T/2"], metrics=(), out=str(tmp_path)))
    from dimbench.train import distributed as D

    comp = CompareRun(cfg, D.setup("cpu"))
    run = ModelRun(comp, comp.specs[0], cfg.recipe.seed)
    trainer = run.start()
    assert trainer.model.y_embedder.dropout_prob == 0.0
    assert trainer.model.learn_sigma is False and trainer.cfg.loss == "mse"
    assert trainer.cfg.label_dropout == 0.1 and trainer.cfg.schedule == "linear"


def test_budget_parsing():
    assert parse_budget("2000") == parse_budget("2000steps")
    assert parse_budget("2000").unit == "steps"
    assert parse_budget("2e15").value == parse_budget("2PF").value == 2e15
    assert parse_budget("300TFLOPs").unit == "flops"
    assert parse_budget("10m").value == parse_budget("600s").value == 600
    assert parse_budget("1.5h").unit == "seconds"
    for bad in ("abc", "1.5", "0", "5x"):
        with pytest.raises(UsageError):
            parse_budget(bad)


def test_flops_budget_gives_each_model_its_own_steps():
    def spec(flops: int) -> PlannedModel:
        return PlannedModel("DiM-T/2", {}, "dim", 64, 7, 1, 1.0, flops)

    budget = parse_budget("1e12")
    cheap = evaluation_points(budget, spec(10**9), evals=4, fid_every=2)
    dear = evaluation_points(budget, spec(4 * 10**9), evals=4, fid_every=2)
    assert [p.steps for p in cheap] == [0, 250, 500, 750, 1000]
    assert [p.steps for p in dear] == [0, 62, 125, 188, 250]
    assert [p.quality for p in cheap] == [False, False, True, False, True]
    with pytest.raises(UsageError, match="fewer than --evals"):
        evaluation_points(parse_budget("1e9"), spec(10**9), evals=4, fid_every=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "paper"], "--preset paper needs --data"),
        (["--preset", "smoke", "--budget", "lots"], "--budget 'lots'"),
        (["--preset", "smoke", "--match", "size"], "--match 'size'"),
        (["--preset", "huge"], "--preset 'huge'"),
        (["--preset", "smoke", "--models", "DiM-T/2", "Nope-T/2"], "unknown model 'Nope-T/2'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["train-compare", "--out", str(tmp_path / "x"), "--no-progress", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_torchrun_two_processes_match_one(smoke, tmp_path):
    """Under torchrun (2 CPU ranks, gloo) the same comparison gives the same numbers: each rank
    trains its half of every global batch, evaluates a slice, and rank 0 gathers."""
    import os
    import subprocess
    import sys

    ref_out, cache = smoke
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["train-compare", "--preset", "smoke", "--out", str(tmp_path / "ddp"),
            "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*launch, "-m", "dimbench.cli", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = read_csv(tmp_path / "ddp" / "train_compare.csv")
    ref = {(r["label"], r["point"]): r for r in read_csv(ref_out / "train_compare.csv")}
    assert len(ddp) == len(ref)
    for r in ddp:
        mine = ref[(r["label"], r["point"])]
        assert r["world_size"] == "2" and r["step"] == mine["step"]
        for col in ("train_loss", "heldout_loss", "heldout_loss_raw", "fid", "swd"):
            if mine[col]:
                assert float(r[col]) == pytest.approx(float(mine[col]), rel=1e-4), col


def test_match_params_scales_widths_to_the_first_models_parameters():
    from dimbench.train.compare import plan_models

    cfg = resolve(CompareConfig(preset="smoke", match="params"))
    specs = plan_models(cfg, in_channels=3, downsample=1, num_classes=10)
    ref = specs[0]
    for s in specs[1:]:
        assert s.match["by"] == "params" and s.match["width_to"] == s.width
        assert s.params == pytest.approx(ref.params, rel=0.05)
        assert s.width % 4 == 0 or s.family == "uvit"
    none = plan_models(resolve(CompareConfig(preset="smoke", match="none")), 3, 1, 10)
    assert [s.match for s in none] == [None, None, None]
    assert [s.width for s in none] == [64, 64, 64]


def test_training_code_draws_no_figures():
    """Data flows one way: the command draws the figures; nothing under dimbench/train imports
    the plotting modules."""
    import ast
    from pathlib import Path

    import dimbench.train

    offenders = []
    for path in Path(dimbench.train.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("dimbench.plots")]
    assert offenders == []


def test_workers_train_the_models_at_once_with_the_same_numbers(smoke, tmp_path, monkeypatch):
    """--workers 2: each model in a process of its own, pinned to half the cores (one thread
    on two): the rows of the sequential run, to float noise; --out relative to the caller's
    folder, as the children see it too."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    ref_out, cache = smoke
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train-compare", "--preset", "smoke", "--workers", "2", "--out", "w2",
              "--cache-dir", str(cache), "--no-progress"])  # fmt: skip
    assert e.value.code == 0
    rows = read_csv(tmp_path / "w2" / "train_compare.csv")
    ref = {(r["label"], r["point"]): r for r in read_csv(ref_out / "train_compare.csv")}
    assert sorted((r["label"], r["point"]) for r in rows) == sorted(ref)
    for r in rows:
        mine = ref[(r["label"], r["point"])]
        assert r["step"] == mine["step"] and r["threads"] == str(len(os.sched_getaffinity(0)) // 2)
        for col in ("train_loss", "heldout_loss", "heldout_loss_raw", "fid", "swd"):
            if mine[col]:
                assert float(r[col]) == pytest.approx(float(mine[col]), rel=1e-4), col
    meta = (tmp_path / "w2" / "train_compare.json").read_text()
    assert '"finished"' in meta  # the parent recorded the run's end


def test_slots_train_one_model_and_seed_per_unit(monkeypatch):
    """Every (model, seed) run is a unit of its own, so 3 models x 2 seeds keep 2 slots busy
    (whole models would leave one idle); a failed run is named with its seed."""
    import threading
    from types import SimpleNamespace

    from dimbench.pool import Slot
    from dimbench.train.compare import parallel

    started: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def fake_child(cfg_path, unit, slot, stop, tmp):
        with lock:
            started.append((*unit, slot.cpus))
        return (1, "boom") if unit == ("B", 1) else (0, "")

    monkeypatch.setattr(parallel, "_child", fake_child)
    comp = SimpleNamespace(
        cfg={"any": "config"}, specs=[SimpleNamespace(label=x) for x in "ABC"], seeds=[0, 1]
    )
    with pytest.raises(UsageError, match="B seed 1 \\(exit 1\\): boom"):
        parallel.train_on_slots(comp, [Slot("cpu", (0,), 1), Slot("cpu", (1,), 1)])
    assert sorted((label, seed) for label, seed, _ in started) == [
        (x, s) for x in "ABC" for s in (0, 1)
    ]
    assert {cpus for *_, cpus in started} == {(0,), (1,)}
