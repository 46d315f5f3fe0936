"""The ``dimbench`` command line. Each command lives in ``dimbench/commands/<name>.py`` and
exposes ``register(app)``; heavy imports happen inside the commands so ``--help`` is instant."""

from __future__ import annotations

import importlib
import sys
import typing

import typer

from dimbench import __version__
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
    "info",
    "run",
    "profile",
    "calibrate",
    "predict",
    "plot",
    "train",
    "sample",
    "compare",
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


def _element_type(annotation: object) -> object:
    """``list[int]`` (or ``list[int] | None``) -> ``int``."""
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is list:
            return typing.get_args(arg)[0]
    return annotation


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _list_options(argv: list[str]) -> dict[str, object]:
    """The options of the command named in ``argv`` that take several values (typer's own
    click parameters: duck-typed, typer vendors click)."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    name = next((tok for tok in argv if not tok.startswith("-")), None)
    command = commands.get(name) if name else None
    if command is None:
        return {}
    return {
        opt: param
        for param in command.params
        if param.param_type_name == "option" and param.multiple
        for opt in param.opts
    }


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """``--res 256 512`` -> ``--res 256 --res 512``, for every option that takes a list.

    typer wants an option repeated; users write its values space-separated. Values run until
    the next option; numeric options take only numbers, so a positional argument after them
    stays one. A value of another option's list never starts with "-" (nor does a model name).
    """
    options = _list_options(argv)
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        out.append(tok)
        i += 1
        param = options.get(tok)
        if param is None or i >= len(argv):
            continue
        numeric = _element_type(param.type_descriptor.annotation) in (int, float)
        accepts = _is_number if numeric else (lambda t: not t.startswith("-"))
        out.append(argv[i])  # the first value, whatever it is: typer validates it
        i += 1
        while i < len(argv) and accepts(argv[i]):
            out += [tok, argv[i]]
            i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    args = take_import_options(list(sys.argv[1:] if argv is None else argv))
    args = expand_multi_value_options(args)
    try:
        apply_thread_policy()  # before any command imports torch (see dimbench.threads)
        app(args=args, prog_name="dimbench", standalone_mode=True)
    except UsageError as e:
        print(f"dimbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(f"dimbench: interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
