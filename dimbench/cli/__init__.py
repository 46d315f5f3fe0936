"""The ``dimbench`` command line: the app and ``main`` (``program``), the options several
commands share, each declared once (``options``), and what happens to argv before typer reads
it (``argv``). The commands themselves live in ``dimbench.commands``.

``main``, ``app`` and ``expand_multi_value_options`` are imported from ``program`` on first
use, so that a command module can import ``dimbench.cli.options`` without loading every command.
"""

from __future__ import annotations

import importlib

_FROM_PROGRAM = ("app", "expand_multi_value_options", "main")
__all__ = list(_FROM_PROGRAM)


def __getattr__(name: str):
    if name not in _FROM_PROGRAM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("dimbench.cli.program"), name)
