"""The command line before typer reads it: list options' values written space-separated, and
the options that were renamed, refused with their new spelling."""

from __future__ import annotations

import typing

from dimbench.errors import UsageError

# (command, removed option) -> what to write instead
RENAMED = {
    ("train", "--bf16"): "--dtype bf16",
    ("train", "--no-bf16"): "--dtype fp32",
    ("train-compare", "--bf16"): "--dtype bf16",
    ("train-compare", "--no-bf16"): "--dtype fp32",
    ("sample", "--weights"): "--ckpt-weights ema|model (--weights is run's checkpoint file)",
}


def command_name(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option."""
    return next((tok for tok in argv if not tok.startswith("-")), None)


def refuse_renamed_options(argv: list[str]) -> None:
    """A one-line UsageError for an option that is now spelled otherwise."""
    name = command_name(argv)
    for tok in argv:
        instead = RENAMED.get((name, tok.split("=", 1)[0]))
        if instead is not None:
            raise UsageError(f"{name} {tok.split('=', 1)[0]} is gone: write {instead}")


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


def _list_options(group, argv: list[str]) -> dict[str, object]:
    """The options of the command named in ``argv`` that take several values (typer's own
    click parameters: duck-typed, typer vendors click)."""
    name = command_name(argv)
    command = getattr(group, "commands", {}).get(name) if name else None
    if command is None:
        return {}
    return {
        opt: param
        for param in command.params
        if param.param_type_name == "option" and param.multiple
        for opt in param.opts
    }


def expand_list_options(argv: list[str], group) -> list[str]:
    """``--res 256 512`` -> ``--res 256 --res 512``, for every option that takes a list.

    typer wants an option repeated; users write its values space-separated. Values run until
    the next option; numeric options take only numbers, so a positional argument after them
    stays one. A value of another option's list never starts with "-" (nor does a model name).
    ``group``: the click group of the commands.
    """
    options = _list_options(group, argv)
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
