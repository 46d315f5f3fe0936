"""The command line as a newcomer meets it: list options, --help, --version, bad input (one line,
exit 2, before any work), destinations that cannot be written, the thread policy, and worker
processes that import the installed package whatever folder they are started from."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from dimbench.cli import expand_multi_value_options, main


def cli(args: list[str]) -> int:
    """Run `dimbench ARGS` in this process; its exit code."""
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    return err


# ---- parsing --------------------------------------------------------------------------------


def test_every_list_option_takes_space_separated_values():
    argv = "run throughput --batch-size 1 8 --dtype fp32 bf16 --mode forward train --res 256 512"
    assert expand_multi_value_options(argv.split()) == [
        "run", "throughput", "--batch-size", "1", "--batch-size", "8", "--dtype", "fp32",
        "--dtype", "bf16", "--mode", "forward", "--mode", "train", "--res", "256", "--res", "512",
    ]  # fmt: skip
    assert expand_multi_value_options("plot --format png svg".split()) == [
        "plot", "--format", "png", "--format", "svg",
    ]  # fmt: skip
    # numeric lists stop at a word: the positional after them stays one
    assert expand_multi_value_options("run --res 256 512 flops".split()) == [
        "run", "--res", "256", "--res", "512", "flops",
    ]  # fmt: skip
    # options that take one value are left alone
    assert expand_multi_value_options("train --model DiM-T/2 --steps 5".split()) == [
        "train", "--model", "DiM-T/2", "--steps", "5",
    ]  # fmt: skip


def test_readme_gpu_example_parses(capsys):
    """The README's GPU line used to fail with "unexpected extra argument (8)"; without CUDA it
    now gets as far as the device check."""
    args = "run throughput --device cuda --dtype bf16 --batch-size 1 8 --res 256 512 1024 1536"
    code = cli(args.split())
    err = one_line_error(capsys)
    import torch

    if not torch.cuda.is_available():
        assert code == 2 and "CUDA is not available" in err


def test_version(capsys):
    from dimbench import __version__

    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dimbench {__version__}"


@pytest.mark.parametrize(
    "command, shown",
    [
        ("run", "[runs/<machine>/"),
        ("run", "[CPU 10, GPU 20]"),
        ("fid", "default: ~/.cache/dimbench]"),
        ("train", "[runs/train-MODEL-SIZEpx"),
        ("train", "[10% of --steps]"),
        ("sample", "[CKPT's run folder/samples]"),
    ],
)
def test_help_shows_bracketed_defaults(command, shown, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli([command, "--help"]) == 0
    assert shown in " ".join(capsys.readouterr().out.split())


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scan-backend", "bogus"], "unknown scan backend 'bogus'"),
        (["--attn-backend", "bogus"], "unknown attention backend 'bogus'"),
        (["--ema-decay", "2"], "--ema-decay must be in [0, 1)"),
        (["--label-dropout", "1.5"], "--label-dropout must be in [0, 1)"),
        (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
        (["--warmup", "-5"], "--warmup must be >= 0"),
        (["--lr", "0"], "--lr must be positive"),
        (["--beta2", "1.0"], "--beta2 must be in [0, 1)"),
        (["--ckpt-every", "0"], "--ckpt-every must be positive"),
    ],
)
def test_train_refuses_bad_values_before_any_work(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--model", "DiM-T/2", "--image-size", "8", "--steps", "2", "--out", str(out)]
    assert cli([*base, *args]) == 2
    assert message in one_line_error(capsys)
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eta", "-1"], "--eta must be >= 0"),
        (["--cfg-scale", "-0.5"], "--cfg-scale must be >= 0"),
        (["--ckpt-weights", "best"], "--ckpt-weights must be 'ema' or 'model'"),
        (["--order", "4"], "--order must be 1, 2 or 3"),
        (["--scan-backend", "bogus"], "unknown scan backend 'bogus'"),
    ],
)
def test_sample_refuses_bad_values(args, message, tmp_path, capsys):
    assert cli(["sample", "--ckpt", str(tmp_path), "--out", str(tmp_path / "s"), *args]) == 2
    assert message in one_line_error(capsys)


def unwritable_destinations(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [a_file, Path("/proc/dimbench-test/out")]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize(
    "command",
    [
        ["run", "flops", "--models", "DiT-T/2", "--res", "32"],
        ["train", "--model", "DiT-T/2", "--image-size", "8", "--steps", "1"],
        ["train-compare", "--preset", "smoke"],
    ],
)
def test_unwritable_out_is_one_line_exit_2(command, which, tmp_path, capsys):
    out = unwritable_destinations(tmp_path)[which]
    assert cli([*command, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "--out" in err and str(out) in err


def test_plot_into_a_read_only_folder(tmp_path, capsys, monkeypatch):
    import errno

    import dimbench.paths
    from dimbench.bench import get_suite
    from dimbench.results import ResultStore

    schema = get_suite("flops").schema
    store = ResultStore(tmp_path, schema)
    key = dict(model="DiT-T/2", image_size=32, batch_size=1, device="meta", dtype="fp32")
    store.append(schema.row(suite="flops", **key, mode="forward", status="ok", gflops=1.0))

    def read_only(*args, **kwargs):  # what a read-only mount answers (root included)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(dimbench.paths.tempfile, "TemporaryFile", read_only)
    assert cli(["plot", str(tmp_path)]) == 2
    assert "cannot write there (Read-only file system)" in one_line_error(capsys)
    assert not list(tmp_path.glob("scaling*"))


# ---- the thread policy ----------------------------------------------------------------------


def test_thread_policy_is_set_once_for_every_command(monkeypatch):
    from dimbench.threads import apply_thread_policy

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert apply_thread_policy() == "passive" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert apply_thread_policy() == "active"  # a user's explicit choice is kept
    monkeypatch.setenv("OMP_WAIT_POLICY", "lazy")
    from dimbench.errors import UsageError

    with pytest.raises(UsageError, match="unknown OMP wait policy 'lazy'"):
        apply_thread_policy()


# ---- workers import the installed package ---------------------------------------------------


def test_worker_ignores_a_dimbench_folder_in_the_working_directory(tmp_path, monkeypatch):
    """`pip install .` then `dimbench run` from the repository root: the source folder
    dimbench/ (which has no suites/) must not shadow the installed package in the worker."""
    from dimbench.bench.runner import run_isolated
    from dimbench.bench.spec import Config

    decoy = tmp_path / "dimbench"
    decoy.mkdir()
    (decoy / "__init__.py").write_text(
        textwrap.dedent("""\
            raise ImportError("the working directory's dimbench/ was imported")
        """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    result = run_isolated(Config("memory", "DiT-T/2", 32, timeout_s=120))
    assert result["status"] == "ok", result.get("error")
    assert sys.path  # the test process itself is untouched


# ---- exit status ----------------------------------------------------------------------------


def test_a_sweep_with_an_error_row_exits_1_and_says_where(tmp_path, capsys, monkeypatch):
    import dimbench.measure

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the counter")

    monkeypatch.setattr(dimbench.measure, "count_flops", broken)
    args = ["run", "flops", "--models", "DiT-T/2", "--res", "32", "--out", str(tmp_path)]
    assert cli(args) == 1
    captured = capsys.readouterr()
    assert "1 configuration ended in error" in " ".join(captured.out.split())
    assert "a bug in the counter" in (tmp_path / "flops.csv").read_text()


def test_an_interrupted_sweep_says_what_it_kept(tmp_path, capsys, monkeypatch):
    import dimbench.measure

    calls = []
    real = dimbench.measure.count_flops

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dimbench.measure, "count_flops", interrupted_on_the_second)
    args = ["run", "flops", "--models", "DiT-T/2", "--res", "32", "64", "96"]
    assert cli([*args, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 1 of 3 configurations measured and kept" in err
    from dimbench.bench import get_suite
    from dimbench.results import ResultStore

    rows = ResultStore(tmp_path, get_suite("flops").schema).rows()
    assert [r["image_size"] for r in rows] == ["32"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "--lr must be positive"),
        (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1)"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    ],
)
def test_train_compare_checks_the_same_recipe_ranges(args, message, tmp_path, capsys):
    out = tmp_path / "compare"
    assert cli(["train-compare", "--preset", "smoke", "--out", str(out), *args]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


# ---- one writer per --out; what cannot fit is refused before it runs -------------------------

DATASHEET = str(Path(__file__).parents[1] / "results/device_profiles/h100-sxm-datasheet.json")


def test_a_second_run_on_a_locked_out_is_one_line_exit_2_and_measures_nothing(
    tmp_path, capsys, monkeypatch
):
    from dimbench.bench import runner
    from tests.test_out_lock import hold_in_another_process

    monkeypatch.setattr(runner, "run_isolated", lambda *a, **k: pytest.fail("it measured"))
    first = hold_in_another_process(tmp_path)
    try:
        for command in (
            ["run", "throughput", "--models", "DiT-T/2", "--res", "32"],
            ["run", "flops", "--models", "DiT-T/2", "--res", "32"],
            ["profile", "DiT-T/2", "--res", "32"],
            ["predict", "--models", "DiT-T/2", "--res", "32", "--device-profile", DATASHEET],
            ["train-compare", "--preset", "smoke"],
        ):
            assert cli([*command, "--out", str(tmp_path)]) == 2
            err = one_line_error(capsys)
            assert f"is in use by pid {first.pid} " in err
            assert "(dimbench run throughput --out X)" in err
    finally:
        first.kill()
        first.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dimbench.lock"]  # no rows
    assert cli(["run", "flops", "--models", "DiT-T/2", "--res", "32", "--out", str(tmp_path)]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    assert not (tmp_path / ".dimbench.lock").exists()


@pytest.fixture
def oom_worker(monkeypatch):
    """Every worker launch recorded (its image size) and answered as the OOM killer would."""
    from dimbench.bench import runner

    calls = []

    def worker(cfg, suite=None, env=None, stop=None):
        calls.append(cfg.image_size)
        return {"status": "oom", "error": "killed by SIGKILL", "wall_s": 75.0}

    monkeypatch.setattr(runner, "run_isolated", worker)
    return calls


def test_res_100000_is_a_too_big_row_not_a_run(tmp_path, capsys, oom_worker):
    calls = oom_worker
    args = ["run", "throughput", "--models", "DiT-T/2", "--res", "100000", "--out", str(tmp_path)]
    assert cli(args) == 0 and calls == []
    assert "too_big predicted peak memory 120,001 MB" in " ".join(capsys.readouterr().err.split())
    csv = (tmp_path / "throughput.csv").read_text()
    assert ",too_big," in csv and ",120001," in csv

    assert cli(args) == 0 and calls == []  # a rerun keeps the row
    # --no-memory-check runs it (and the earlier too_big row does not count as done)
    assert cli([*args, "--no-memory-check"]) == 0 and calls == [100000]


@pytest.mark.parametrize("command", [["run", "throughput"], ["run", "memory"], ["profile"]])
def test_no_memory_check_predicts_nothing_and_runs_it(command, tmp_path, monkeypatch, oom_worker):
    from dimbench.bench import memory_check

    calls = oom_worker
    monkeypatch.setattr(memory_check, "predicted_peak_bytes", lambda cfg: pytest.fail("checked"))
    args = [*command, "--models", "DiT-T/2", "--res", "100000", "--no-memory-check"]
    assert cli([*args, "--out", str(tmp_path)]) == 0 and calls == [100000]
