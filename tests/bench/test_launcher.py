"""The cluster launcher: options checked in one line, --dry-run of a GPU sweep planned on this
CPU-only machine, --launcher local landing rows through submitit, a dead task recorded as a
row and resubmitted by the rerun, and tasks that skip what another writer finished."""

from __future__ import annotations

import sys

import pytest

from dimbench.bench import launcher
from dimbench.bench.launcher import Task, cluster_options, pending, run_task
from dimbench.bench.spec import Config
from dimbench.errors import UsageError
from dimbench.results import load_results, row_key
from tests.rows import SCHEMAS, store_of
from tests.test_cli import cli, one_line_error

PAPER = ["--models", "DiM-L/2", "DiM-H/2", "DiT-XL/2", "U-ViT-H/2"]
PAPER += ["--res", "256", "512", "768", "1024", "1280", "1536", "--dtype", "fp32", "bf16"]
PAPER += ["--batch-size", "1", "4", "8", "--mode", "forward", "train"]
TINY = ["run", "throughput", "--models", "DiT-T/2", "--res", "32", "--repeats", "1"]
TINY += ["--warmup", "0"]


@pytest.mark.parametrize(
    "text, minutes",
    [("90", 90), ("2:00:00", 120), ("1:30", 2), ("1-0", 1440), ("0-1:30", 90), ("0:59:01", 60)],
)
def test_slurm_time_forms(text, minutes):
    assert cluster_options("slurm", time=text).time_min == minutes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"launcher": "pbs"}, "--launcher 'pbs': valid: local, slurm"),
        ({"launcher": "slurm", "time": "2h"}, "--slurm-time '2h'"),
        ({"launcher": "slurm", "time": "0:30"}, "at least a minute"),
        ({"launcher": "slurm", "args": ["qos"]}, "--slurm-arg 'qos': write KEY=VALUE"),
        ({"launcher": "slurm", "gpus_per_task": -1}, "--slurm-gpus-per-task must be >= 0"),
    ],
)
def test_bad_cluster_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        cluster_options(**kwargs)


def test_slurm_args_go_to_submitit_or_sbatch():
    opts = cluster_options("slurm", "gpu", 1, "30", "proj", ["array_parallelism=4", "foo-bar=x"])
    params = opts.parameters()
    assert params["slurm_array_parallelism"] == 4  # one of submitit's own parameters
    assert params["slurm_additional_parameters"] == {"foo_bar": "x"}  # an #SBATCH line
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 30


def test_without_submitit_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert cli([*TINY, "--launcher", "local", "--out", str(tmp_path)]) == 2
    assert "pip install 'dimbench[cluster]'" in one_line_error(capsys)


def test_dry_run_of_the_paper_sweep_on_a_gpu_partition(tmp_path, capsys):
    """288 configurations for GPUs, planned here without one: printed, nothing submitted."""
    out = tmp_path / "out"
    args = ["run", "throughput", *PAPER, "--device", "cuda", "--launcher", "slurm"]
    args += ["--slurm-partition", "gpu4", "--slurm-gpus-per-task", "1", "--slurm-time", "2:00:00"]
    args += ["--slurm-arg", "array_parallelism=4", "--dry-run", "--out", str(out)]
    assert cli(args) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("slurm: 1 job array of 288 tasks")
    assert "#SBATCH --array=0-287%4" in text and "#SBATCH --partition=gpu4" in text
    assert "#SBATCH --gpus-per-task=1" in text and "#SBATCH --time=120" in text
    tasks = [ln for ln in lines if ln.startswith("  [")]
    assert len(tasks) == 288
    assert tasks[0] == "  [  0] DiM-L/2 @ 256px  b1 fp32 forward"
    assert tasks[-1] == "  [287] U-ViT-H/2 @ 1536px  b8 bf16 train"
    assert lines[-1] == "nothing submitted (--dry-run)" and not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "cuda:1"], "--device 'cuda:1' with --launcher: cpu or cuda"),
        (["--device", "cuda"], "needs --slurm-gpus-per-task 1"),
        (["--workers", "2"], "no --devices or --workers"),
    ],
)
def test_bad_cluster_runs(extra, message, tmp_path, capsys):
    assert cli([*TINY, "--launcher", "slurm", "--dry-run", *extra, "--out", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)


def test_slurm_needs_a_shared_out_folder(capsys):
    assert cli([*TINY, "--launcher", "slurm", "--dry-run"]) == 2
    assert "--launcher slurm needs --out" in one_line_error(capsys)


def test_pending_matches_backends_a_task_resolves():
    cfg = Config(suite="throughput", model="DiM-T/2", image_size=32, scan_backend="auto")
    resolved = row_key({**cfg.key_fields(), "scan_backend": "cpu"})
    other = row_key({**cfg.key_fields(), "scan_backend": "cpu", "image_size": 64})
    assert pending([cfg], {resolved}) == []
    assert pending([cfg], {other}) == [cfg]


def test_local_launcher_lands_rows_and_a_rerun_skips_them(tmp_path, capsys):
    out = tmp_path / "out"
    args = [*TINY, "--launcher", "local", "--out", str(out)]
    assert cli(args) == 0
    err = capsys.readouterr().err
    assert "1 task (local)" in err and "DiT-T/2 @ 32px  b1 fp32 forward  ok" in err
    df = load_results(out)
    assert list(df["status"]) == ["ok"] and df["imgs_per_s"][0] > 0
    assert df["slot"][0].startswith("local ")  # the submitit job that measured it
    assert (out / "submitit").is_dir()
    assert cli(args) == 0
    assert "1 of 1 configurations already in" in capsys.readouterr().err
    assert len(store_of(out, "throughput").rows()) == 1


def test_a_dead_task_is_a_row_and_the_rerun_resubmits_it(tmp_path, monkeypatch, capsys):
    submitted: list[list[str]] = []

    def die(opts, tasks, out_dir, on_done):
        submitted.append([Config.from_dict(t.config).label() for t in tasks])
        for t in tasks:
            on_done(t, None, "timeout: task 77_0 (TIMEOUT): job timed out")

    monkeypatch.setattr(launcher, "submit", die)
    args = [*TINY, "--batch-size", "1", "2", "--launcher", "local", "--out", str(tmp_path)]
    assert cli(args) == 0
    rows = store_of(tmp_path, "throughput").rows()
    assert [r["status"] for r in rows] == ["timeout", "timeout"]
    assert rows[0]["error"] == "task 77_0 (TIMEOUT): job timed out" and rows[0]["slot"] == "local"
    assert cli(args) == 0  # timeouts are retried, as in a local sweep
    assert submitted[1] == submitted[0] and len(submitted[0]) == 2
    assert cli([*args, "--skip-failed"]) == 0
    assert len(submitted) == 2  # nothing left to submit


def test_a_task_skips_what_another_writer_finished(tmp_path):
    cfg = Config(suite="throughput", model="DiT-T/2", image_size=32, attn_backend="auto")
    done = SCHEMAS["throughput"].row(**{**cfg.key_fields(), "attn_backend": "sdpa"}, status="ok")
    store_of(tmp_path, "throughput").append(done)
    result = run_task(Task(cfg.to_dict(), str(tmp_path), memory_check=True))
    assert result == {"label": cfg.label(), "status": "skipped"}
