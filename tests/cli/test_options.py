"""One set of CLI options: every command spells a shared concept the same way, with the same
help and default; renamed options are refused with their new spelling; --conv-backend reaches
train, sample and train-compare."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import typer

from dimbench.cli import app
from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE
from tests.test_cli import cli, one_line_error


def commands() -> dict:
    return typer.main.get_command(app).commands


def shared_definitions() -> dict[str, list]:
    """flag -> the options module's definitions that declare it (an Annotated's OptionInfo)."""
    out: dict[str, list] = {}
    for value in vars(o).values():
        if typing.get_origin(value) is not typing.Annotated:
            continue
        info = value.__metadata__[0]
        # typer keeps an Annotated option's first name where a default would go
        for decl in (info.default, *info.param_decls):
            for flag in decl.split("/"):
                out.setdefault(flag, []).append(info)
    return out


# concept -> the default every command that takes it has
ONE_DEFAULT = {
    "--device": DEFAULT_DEVICE,
    "--scan-backend": "auto",
    "--attn-backend": "auto",
    "--conv-backend": "auto",
    "--compile": False,
    "--threads": None,
    "--out": None,
    "--inception-weights": None,
    "--cache-dir": None,
    "--vae": None,
    "--device-profile": None,
}
# concepts whose default is the spec's of each command (help and spelling still one)
SHARED = (
    *ONE_DEFAULT,
    "--dtype",
    "--progress",
    "--res",
    "--mode",
    "--redo",
    "--timeout",
    "--lr",
    "--weight-decay",
    "--ema-decay",
    "--schedule",
    "--num-workers",
    "--data",
    "--image-size",
    "--ckpt-every",
)


def test_every_shared_concept_has_one_spelling_help_and_default():
    definitions = shared_definitions()
    seen: dict[str, set[str]] = {}
    for name, command in commands().items():
        for param in command.params:
            flags = [*param.opts, *param.secondary_opts]
            for concept in set(flags) & set(SHARED):
                seen.setdefault(concept, set()).add(name)
                assert param.opts[0] == concept, (name, flags)  # one spelling
                if concept == "--out":  # one meaning; each command says what it writes where
                    annotation = param.type_descriptor.annotation
                    assert Path in (annotation, *typing.get_args(annotation)), name
                    assert param.help.endswith("]"), name
                else:
                    helps = {d.help for d in definitions[concept]}
                    assert param.help in helps, (name, concept)
                if concept in ONE_DEFAULT:
                    assert param.default == ONE_DEFAULT[concept], (name, concept, param.default)
    # the concepts the redesign is about are taken by every command that runs a model
    runs_models = {"run", "profile", "calibrate", "predict", "train", "sample", "train-compare"}
    assert runs_models | {"fid", "regress"} <= seen["--device"]
    for backend in ("--scan-backend", "--attn-backend", "--conv-backend"):
        assert {"run", "train", "sample", "train-compare"} <= seen[backend], backend
    assert {"run", "profile", "predict", "calibrate", "train", "train-compare"} <= seen["--dtype"]


def test_weights_means_one_thing():
    """--weights is run's checkpoint file; sample's choice of weights is --ckpt-weights."""
    having = {
        name
        for name, command in commands().items()
        for p in command.params
        if "--weights" in p.opts
    }
    assert having == {"run"}
    sample = {p.opts[0]: p for p in commands()["sample"].params if p.opts}
    assert sample["--ckpt-weights"].default == "ema"


def test_the_help_shows_the_specs_defaults():
    from dimbench.bench.spec import RUN_TIMING
    from dimbench.train.config import PAPER_DEFAULTS, TrainConfig

    run = {p.opts[0]: p for p in commands()["run"].params if p.opts}
    assert f"CPU {RUN_TIMING['cpu']['repeats']}" in run["--repeats"].help
    train = {p.opts[0]: p for p in commands()["train"].params if p.opts}
    assert train["--batch-size"].default == TrainConfig.batch_size
    assert train["--lr"].help == o.Lr.__metadata__[0].help
    assert f"[{o.number(PAPER_DEFAULTS['lr'])}]" in train["--lr"].help


@pytest.mark.parametrize(
    "args, instead",
    [
        (["train", "--model", "DiT-T/2", "--steps", "1", "--bf16"], "--dtype bf16"),
        (["train", "--no-bf16", "--model", "DiT-T/2"], "--dtype fp32"),
        (["train-compare", "--preset", "smoke", "--bf16"], "--dtype bf16"),
        (["sample", "--ckpt", "x", "--weights", "model"], "--ckpt-weights"),
        (["sample", "--ckpt", "x", "--weights=ema"], "--ckpt-weights"),
    ],
)
def test_renamed_options_are_one_line_errors(args, instead, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(args) == 2
    err = one_line_error(capsys)
    assert "is gone" in err and instead in err
    assert not list(tmp_path.iterdir())  # refused before any work


def test_train_takes_dtype(tmp_path, capsys):
    base = ["train", "--model", "DiT-T/2", "--image-size", "8", "--steps", "1"]
    assert cli([*base, "--dtype", "fp16", "--out", str(tmp_path / "r")]) == 2
    assert "--dtype 'fp16': training takes fp32 or bf16" in one_line_error(capsys)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--model", "DiM-T/2", "--image-size", "8", "--steps", "1"],
        ["train-compare", "--preset", "smoke"],
    ],
)
def test_conv_backend_is_checked_before_any_work(command, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli([*command, "--conv-backend", "bogus", "--out", str(out)]) == 2
    assert "unknown conv backend 'bogus'" in one_line_error(capsys)
    assert not (out / "checkpoint.pt").exists() and not (out / "train_compare.csv").exists()


def test_conv_backend_reaches_the_model_in_train_and_sample(tmp_path, capsys):
    from dimbench.registry import KERNELS
    from dimbench.train.generate import load_for_sampling

    out = tmp_path / "run"
    train = ["train", "--model", "DiM-T/2", "--image-size", "8", "--steps", "1"]
    train += ["--batch-size", "2", "--no-progress", "--conv-backend", "torch", "--out", str(out)]
    assert cli(train) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["conv_backend"] == "torch" and config["dtype"] == "fp32"
    assert "conv" in KERNELS
    model, _ = load_for_sampling(out / "checkpoint.pt", conv_backend="torch")
    mixers = [m for m in model.modules() if hasattr(m, "conv_backend")]
    assert mixers and {m.conv_backend for m in mixers} == {"torch"}
    assert cli(["sample", "--ckpt", str(out), "--conv-backend", "bogus"]) == 2
    assert "unknown conv backend 'bogus'" in one_line_error(capsys)
    samples = tmp_path / "s"
    sample = ["sample", "--ckpt", str(out), "--num", "1", "--steps", "1", "--no-progress"]
    assert cli([*sample, "--conv-backend", "torch", "--out", str(samples)]) == 0
    assert (samples / "samples.npz").is_file()


def test_python_m_dimbench_cli_runs(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for module in ("dimbench", "dimbench.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0 and done.stdout.startswith("dimbench "), done.stderr
