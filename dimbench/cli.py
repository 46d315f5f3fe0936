"""The ``dimbench`` command line. Each command lives in ``dimbench/commands/<name>.py`` and
exposes ``register(app)``; heavy imports happen inside the commands so ``--help`` is instant."""

from __future__ import annotations

import importlib
import sys

import typer

from dimbench.errors import UsageError

app = typer.Typer(
    name="dimbench",
    help="Benchmark and profile state-space diffusion backbones (DiM) against DiT and U-ViT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("info", "run", "plot", "train", "sample", "compare", "fid", "regress")

# Options that take several values. typer wants `--res 256 --res 512`; users write
# `--res 256 512 1024`, so argv is rewritten before typer sees it.
MULTI_VALUE_OPTIONS = {"--res": str.isdigit, "--models": lambda tok: not tok.startswith("-")}


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """``--res 256 512`` -> ``--res 256 --res 512`` (values run until the next option)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        out.append(tok)
        i += 1
        accepts = MULTI_VALUE_OPTIONS.get(tok)
        if accepts is None or i >= len(argv):
            continue
        out.append(argv[i])  # the first value, whatever it is: typer validates it
        i += 1
        while i < len(argv) and accepts(argv[i]):
            out += [tok, argv[i]]
            i += 1
    return out


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"dimbench.commands.{_name}")
    except ModuleNotFoundError as e:
        if e.name != f"dimbench.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> None:
    args = expand_multi_value_options(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="dimbench", standalone_mode=True)
    except UsageError as e:
        print(f"dimbench: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
