"""Bring your own backbone: a model defined in a file outside the package, registered with a
bare ``@dimbench.register_model``, loaded with --import, and run through every command."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

PLUGIN = textwrap.dedent('''
    """A plain convolutional denoiser: no scan, no attention, no dimbench internals."""
    import torch
    from torch import nn

    import dimbench


    class TinyConvNet(nn.Module):
        def __init__(self, input_size=(32, 32), in_channels=4, num_classes=1000, width=16):
            super().__init__()
            self.in_channels = self.out_channels = in_channels
            self.num_classes = num_classes
            self.learn_sigma = False
            self.width = width
            self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
            self.time = nn.Linear(1, width)
            self.label = nn.Embedding(num_classes + 1, width)
            self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
            self.head = nn.Conv2d(width, in_channels, 3, padding=1)

        def forward(self, x, t, y):
            cond = self.time(t[:, None].float() / 1000) + self.label(y)
            return self.head(self.body(self.stem(x) + cond[:, :, None, None]))


    @dimbench.register_model("TinyConv-T/2")
    def tinyconv_t2(input_size=(32, 32), **kwargs):
        return TinyConvNet(input_size, **kwargs)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin module on the path of this process and of the workers it starts."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "tinyconv_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("DIMBENCH_IMPORT", "")  # restored after the test: --import adds to it
    return ["--import", "tinyconv_plugin"]


def cli(args: list[str]) -> int:
    from dimbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


def test_a_backbone_from_outside_runs_through_every_command(plugin, tmp_path, capsys):
    from dimbench.registry import get_model
    from dimbench.results import load_results

    assert cli([*plugin, "models"]) == 0
    assert "TinyConv-T/2" in capsys.readouterr().out.split()
    spec = get_model("TinyConv-T/2")  # the defaults of a bare registration
    assert (spec.kernels, spec.patch_size, spec.family, spec.baseline) == ((), 2, "TinyConv", False)

    res = tmp_path / "res"
    runs = ["--models", "TinyConv-T/2", "DiT-T/2", "--res", "32", "64", "--out", str(res)]
    timing = ["--repeats", "2", "--warmup", "1", "--threads", "1"]
    for suite in ("throughput", "memory"):
        assert cli(["run", suite, *runs, *timing, *plugin]) == 0  # the workers import it too
    assert cli([*plugin, "run", "flops", *runs]) == 0
    df = load_results(res)
    mine = df[df["model"] == "TinyConv-T/2"]
    assert len(mine) == 6 and set(mine["status"]) == {"ok"}
    assert set(mine["family"]) == {"tinyconv"} and set(mine["tokens"]) == {4, 16}
    # no kernels declared: no backend is resolved, passed or recorded for it
    assert set(mine["scan_backend"]) == set(mine["attn_backend"]) == {"-"}
    assert (mine[mine["suite"] == "flops"]["gflops"] > 0).all()

    assert cli([*plugin, "plot", str(res), "--format", "png"]) == 0
    printed = capsys.readouterr().out
    assert (res / "scaling.png").exists() and "TinyConv-T/2" in printed  # a pair with DiT

    run = tmp_path / "train"
    train = ["train", "--model", "TinyConv-T/2", "--image-size", "8", "--steps", "2"]
    assert cli([*plugin, *train, "--batch-size", "2", "--out", str(run), "--no-progress"]) == 0
    sample = ["sample", "--ckpt", str(run), "--num", "2", "--steps", "2", "--no-progress"]
    assert cli([*plugin, *sample, "--out", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "samples.npz").exists()

    compare = ["train-compare", "--preset", "smoke", "--models", "TinyConv-T/2", "DiT-T/2"]
    compare += ["--budget", "2", "--metrics", "", "--match", "none", "--no-progress"]
    assert cli([*plugin, *compare, "--out", str(tmp_path / "compare")]) == 0
    rows = (tmp_path / "compare" / "train_compare.csv").read_text()
    assert "TinyConv-T/2" in rows and "DiT-T/2" in rows


def test_a_module_that_does_not_import_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("DIMBENCH_IMPORT", "")
    assert cli(["--import", "no_such_dimbench_plugin", "models"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import no_such_dimbench_plugin" in err and "\n" not in err
    assert "--import path/to/module.py" in err and "PYTHONPATH" in err


@pytest.mark.parametrize("how", ["name in the current directory", "file path"])
def test_a_module_beside_the_user_imports_as_python_m_would(how, tmp_path, monkeypatch, capsys):
    """`--import mynet` with mynet.py in the current directory (as the README shows it), or
    `--import path/to/mynet.py`, without PYTHONPATH: this process and the workers find it."""
    from dimbench.results import load_results

    here = tmp_path / "project"
    here.mkdir()
    (here / "mynet_plugin.py").write_text(PLUGIN.replace("TinyConv-T/2", "MyNet-T/2"))
    monkeypatch.setenv("DIMBENCH_IMPORT", "")
    monkeypatch.delenv("DIMBENCH_IMPORT_PATH", raising=False)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # restored afterwards
    if how == "file path":
        monkeypatch.chdir(tmp_path)
        option = ["--import", str(Path("project") / "mynet_plugin.py")]
    else:
        monkeypatch.chdir(here)
        option = ["--import", "mynet_plugin"]
    out = tmp_path / "res"
    run = ["run", "throughput", "--models", "MyNet-T/2", "--res", "32", "--repeats", "1"]
    assert cli([*option, *run, "--threads", "1", "--out", str(out)]) == 0  # in a worker
    rows = load_results(out)
    assert list(rows["status"]) == ["ok"] and list(rows["model"]) == ["MyNet-T/2"]
    capsys.readouterr()
