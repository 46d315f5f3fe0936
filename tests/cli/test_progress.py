"""A long command's progress shows in a log too (``dimbench.cli.progress``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.test_cli import cli


def test_calibrate_prints_a_line_per_stage_when_not_on_a_terminal(tmp_path, capsys, monkeypatch):
    from dimbench.measure import calibrate as calibration

    real = calibration.calibrate

    def tiny(opts, progress=None):  # the command's calibration at test sizes
        return real(replace(opts, sweep_bytes=(2**12, 2**16), gemm_size=64), progress)

    monkeypatch.setattr(calibration, "calibrate", tiny)
    out = tmp_path / "profile.json"
    args = ["calibrate", "--models", "DiT-T/2", "--res", "32", "64", "--dtype", "fp32"]
    assert cli([*args, "--budget", "0.002", "--out", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("calibrate [")]
    stages = [ln.split("] ", 1)[1].rsplit(" (", 1)[0] for ln in lines]
    assert [ln.split("]")[0] for ln in lines] == [f"calibrate [{i}/6" for i in range(7)]
    assert stages[0] == "timing DiT-T/2 @ 32px fp32 (0 operators timed)"
    assert stages[1].startswith("timing DiT-T/2 @ 64px fp32 (")
    timed = int(stages[1].split("(")[1].split()[0].replace(",", ""))
    assert timed > 0 and stages[1].endswith(f"({timed:,} operators timed)")
    assert [s.split(" (")[0] for s in stages[2:6]] == [
        "ceilings: copy bandwidth",
        "ceilings: elementwise",
        "ceilings: matmul",
        "ceilings: dispatch",
    ]
    assert stages[6].startswith("fitting the cost model to ") and stages[6].endswith("timed")
    assert out.is_file()


@pytest.mark.parametrize("terminal", [False, True])
def test_stage_progress_on_and_off_a_terminal(terminal, capsys):
    import io

    from rich.console import Console

    from dimbench.cli.progress import stage_progress

    console = Console(file=io.StringIO(), force_terminal=terminal)
    with stage_progress(console, "job") as report:
        report("first stage", 0, 2)
        report("second stage", 1, 2)
    err = capsys.readouterr().err
    if terminal:  # the bar draws on the console, transient
        assert err == ""
    else:
        assert err.splitlines()[0].startswith("job [0/2] first stage (")
        assert err.splitlines()[1].startswith("job [1/2] second stage (")
