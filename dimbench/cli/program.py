"""The typer app: every command registered, and ``main`` (the console script). Each command
lives in ``dimbench/commands/<name>.py``, named as the command (``train_compare.py`` holds
``train-compare``), and exposes ``register(app)``; heavy imports happen inside the commands so
``--help`` is instant."""

from __future__ import annotations

import importlib
import sys

import typer

from dimbench import __version__
from dimbench.cli.argv import expand_list_options, refuse_renamed_options
from dimbench.errors import Interrupted, UsageError
from dimbench.plugins import take_import_options
from dimbench.threads import apply_thread_policy


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dimbench {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="dimbench",
    help="Benchmark and profile state-space diffusion backbones (DiM) against DiT and U-ViT. "
    "Any command takes --import MODULE (repeatable; or DIMBENCH_IMPORT=mod1,mod2): a module "
    "that registers more models or suites (dimbench.register_model).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default]" brackets must survive
)


@app.callback()
def _main_options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


COMMAND_MODULES = (
    "models",
    "backends",
    "run",
    "profile",
    "calibrate",
    "predict",
    "plot",
    "train",
    "sample",
    "train_compare",
    "fid",
    "regress",
    "kernel_report",
)

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"dimbench.commands.{_name}")
    except ModuleNotFoundError as e:
        if e.name != f"dimbench.commands.{_name}":
            raise
        continue
    _mod.register(app)


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """``--res 256 512`` -> ``--res 256 --res 512`` for every list option of dimbench's
    commands (``dimbench.cli.argv.expand_list_options``)."""
    return expand_list_options(argv, typer.main.get_command(app))


def main(argv: list[str] | None = None) -> None:
    args = take_import_options(list(sys.argv[1:] if argv is None else argv))
    try:
        refuse_renamed_options(args)
        args = expand_multi_value_options(args)
        apply_thread_policy()  # before any command imports torch (see dimbench.threads)
        app(args=args, prog_name="dimbench", standalone_mode=True)
    except UsageError as e:
        print(f"dimbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(f"dimbench: interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
