"""The suite registry: a suite is a ``dimbench.bench.spec.Suite`` that a module registers with
``register_suite`` (its measurement of one configuration, the result columns it writes, its
summary and row line, and its plot panels). Each suite's CSV has the schema its declaration
gives (``Suite.schema``); ``schemas()`` are the registered ones, for reading a results
folder. The built-in ones (``throughput``, ``memory``, ``flops``, ``profile``, ``predict``)
live in ``dimbench.bench.suites``; others register the same way from a module named by
``--import`` / ``DIMBENCH_IMPORT`` or an entry point.
"""

from __future__ import annotations

import importlib

BUILTIN_SUITES = ("throughput", "memory", "flops", "profile", "predict")
_SUITES: dict = {}


def register_suite(suite):
    """Register ``suite`` and return it. A result column another registered suite declares
    with another meaning is an error: a column means one thing in every CSV."""
    for other in _SUITES.values():
        if other.name == suite.name:
            continue
        for name, meaning in suite.columns.items():
            known = other.columns.get(name)
            if known is not None and known != meaning:
                raise ValueError(
                    f"result column {name!r} of suite {suite.name!r} means {known!r} in suite "
                    f"{other.name!r}, not {meaning!r}"
                )
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


def schemas() -> dict:
    """Suite name -> ``dimbench.results.Schema`` of every registered suite (the argument of
    ``dimbench.results.load_results`` that reads each CSV with its suite's columns and keys)."""
    return {name: suite.schema for name, suite in _load().items()}
