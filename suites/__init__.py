"""Benchmark suites: what to sweep and which measurement to take (installed as dimbench.suites).

Each suite module (``throughput``, ``memory``, ``flops``) defines ``SUITE``, a
``dimbench.suites.spec.Suite``: its measurement of one configuration and how it is drawn.
``runner.run_sweep`` runs a ``Sweep`` of configurations, each in its own process.
"""

from __future__ import annotations

import importlib

SUITE_NAMES = ("throughput", "memory", "flops")


def get_suite(name: str):
    """The ``Suite`` called ``name``; an unknown name is a UsageError listing the valid ones."""
    from dimbench.errors import UsageError

    if name not in SUITE_NAMES:
        raise UsageError(f"unknown suite {name!r}; valid: {', '.join(SUITE_NAMES)}")
    return importlib.import_module(f"dimbench.suites.{name}").SUITE
