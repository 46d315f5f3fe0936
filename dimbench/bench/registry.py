"""The suite registry: a suite is a ``dimbench.bench.spec.Suite`` that a module registers with
``register_suite`` (its measurement of one configuration, the result columns it writes, its
summary and row line, and its plot panels). The built-in ones (``throughput``, ``memory``,
``flops``, ``profile``, ``predict``) live in ``dimbench.bench.suites``; others register the same
way from a module named by ``--import`` / ``DIMBENCH_IMPORT`` or an entry point.
"""

from __future__ import annotations

import importlib

BUILTIN_SUITES = ("throughput", "memory", "flops", "profile", "predict")
_SUITES: dict = {}


def register_suite(suite):
    """Register ``suite`` (its columns join the result schema) and return it."""
    from dimbench.results import register_columns

    register_columns(suite.columns)
    _SUITES[suite.name] = suite
    return suite


def _load() -> dict:
    """Every suite: the built-in ones and those the --import / DIMBENCH_IMPORT modules and
    entry points register."""
    from dimbench.registry import import_plugins

    for name in BUILTIN_SUITES:
        importlib.import_module(f"dimbench.bench.suites.{name}")
    import_plugins()
    return _SUITES


def suite_names() -> list[str]:
    return list(_load())


def get_suite(name: str):
    """The ``Suite`` called ``name``; an unknown name is a UsageError listing the valid ones."""
    from dimbench.errors import UsageError

    suites = _load()
    if name not in suites:
        raise UsageError(f"unknown suite {name!r}; valid: {', '.join(suites)}")
    return suites[name]


def all_suites() -> list:
    return list(_load().values())
