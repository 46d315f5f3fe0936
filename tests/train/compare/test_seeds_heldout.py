"""train-compare's seeds (a run per model and seed, intervals in the summary) and its held-out
set (images training never sees: whole photographs, or --heldout DIR)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dimbench.cli import main
from dimbench.train.compare import CompareConfig, plan_models, resolve, run_compare
from dimbench.train.compare.heldout import split_heldout
from dimbench.train.compare.stats import mean_ci, paired_p
from dimbench.train.compare.summary import summary_markdown
from dimbench.train.data import HELDOUT_PHOTOS, build_dataset

COMMITTED = Path(__file__).resolve().parents[3] / "results" / "amd-epyc-avx2-2c"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_seeds_give_a_row_per_seed_a_summary_with_intervals_and_resume(tmp_path):
    cfg = dict(preset="smoke", models=["DiT-T/2", "U-ViT-T/2"], seeds=2, budget="4",
               metrics=(), out=str(tmp_path), progress=False)  # fmt: skip
    result = run_compare(CompareConfig(**cfg))
    rows = read_csv(tmp_path / "train_compare.csv")
    keys = {(r["model"], r["seed"], r["point"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 2 * 3  # models x seeds x (step 0 + 2 points)
    assert {r["seed"] for r in rows} == {"0", "1"}
    for model, slug in (("DiT-T/2", "dit-t-2"), ("U-ViT-T/2", "u-vit-t-2")):
        start = {r["seed"]: r["heldout_loss"] for r in rows if r["model"] == model}
        assert start["0"] != start["1"]  # the seed sets the initialisation
        for seed in (0, 1):
            assert (tmp_path / slug / f"seed-{seed}" / "checkpoint.pt").is_file()
    md = summary_markdown(result["rows"], tmp_path / "train_compare.json")
    assert "2 seed(s) from 0" in md and "paired t-test over 2 seeds" in md
    held = [line for line in md.splitlines() if line.startswith("- held-out loss")]
    assert len(held) == 1 and held[0].count("[") == 3  # "mean [lo, hi]" per model (+ the CI)
    assert "start-up, U-ViT-T/2" in md and "conv_init=dirac" in md
    run_compare(CompareConfig(**cfg))  # every (model, seed) finished: nothing is redone
    assert len(read_csv(tmp_path / "train_compare.csv")) == len(rows)


def test_a_summary_reads_a_csv_written_before_seeds():
    rows = read_csv(COMMITTED / "train-compare" / "train_compare.csv")
    rows = [r for r in rows if r["seed"] == "0"]  # what a one-seed run wrote before seeds
    for r in rows:
        r.pop("seed", None)
    md = summary_markdown(rows)
    assert "one seed: no interval" in md and "At equal training FLOPs" in md


def test_interval_and_paired_test():
    iv = mean_ci([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.lo == pytest.approx(2 - 4.302653 / 3**0.5 * 1.0, rel=1e-5)
    assert mean_ci([1.0]).n == 1 and np.isnan(mean_ci([1.0]).lo)
    p, n = paired_p({0: 1.0, 1: 2.0, 2: 3.1}, {0: 1.5, 1: 2.4, 2: 3.6})
    assert n == 3 and p < 0.05
    assert np.isnan(paired_p({0: 1.0}, {0: 2.0})[0])


def test_heldout_photographs_are_never_trained_on():
    dataset, info = build_dataset("photos", 32)
    split = split_heldout("photos", None, 6, 32, 0, dataset, info)
    assert set(split.source.names) == set(HELDOUT_PHOTOS)
    assert not set(split.train.names) & set(split.source.names)
    assert set(split.train.names) | set(split.source.names) == set(dataset.names)
    assert split.info.num_classes == len(dataset.names) - len(HELDOUT_PHOTOS)
    assert split.null_label and split.record["heldout"] == list(HELDOUT_PHOTOS)
    # the same images whatever the run's seed: the split takes the base seed only
    again = split_heldout("photos", None, 6, 32, 0, dataset, info)
    assert split.keys == again.keys


def test_heldout_folder_is_scored_with_the_null_label(tmp_path):
    folder = tmp_path / "held" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    dataset, info = build_dataset("photos", 32)
    split = split_heldout("photos", str(tmp_path / "held"), 2, 32, 0, dataset, info)
    assert len(split.keys) == 2 and split.train is dataset and split.null_label
    x, _ = split.source[split.keys[0]]
    assert tuple(x.shape) == (3, 32, 32)


@pytest.mark.parametrize("make, message", [(False, "no such folder"), (True, "no image files")])
def test_bad_heldout_folder_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    held = tmp_path / "held"
    if make:
        held.mkdir()
        (held / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as e:
        main(["train-compare", "--preset", "smoke", "--heldout", str(held),
              "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_uvit_starts_its_final_conv_as_the_identity_in_a_comparison():
    specs = plan_models(resolve(CompareConfig(preset="smoke")), 3, 1, 8)
    starts = {s.family: (s.overrides.get("conv_init"), s.start) for s in specs}
    assert starts["uvit"][0] == "dirac" and "identity" in starts["uvit"][1]
    assert starts["dim"] == starts["dit"] == (None, None)
    explicit = CompareConfig(preset="smoke", arch={"U-ViT-T/2": {"conv_init": "torch"}})
    uvit = plan_models(resolve(explicit), 3, 1, 8)[2]
    assert uvit.overrides["conv_init"] == "torch" and uvit.start is None
