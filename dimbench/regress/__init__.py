"""The speed gate: the working tree against a base revision, A/B in one run (asv's model).

Public entry points (``dimbench regress`` uses these; the modules' other names are internals):
``source_tree`` / ``head_revision`` / ``resolve_base`` find the two sides, ``run_ab`` compares
them, ``run_baseline`` / ``record_baseline`` work with a stored baseline file, ``GateConfig`` holds
the settings and ``GateResult`` is what each returns.
"""

from dimbench.regress.baseline import BaselineError, baseline_path, machine_class
from dimbench.regress.gate import (
    DEFAULT_ROUNDS,
    GateConfig,
    GateResult,
    check_baseline,
    record_baseline,
    run_ab,
    run_baseline,
)
from dimbench.regress.sides import WorkerError
from dimbench.regress.stats import DEFAULT_ALPHA, DEFAULT_THRESHOLD
from dimbench.regress.worktree import Revision, head_revision, resolve_base, source_tree

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_ROUNDS",
    "DEFAULT_THRESHOLD",
    "BaselineError",
    "GateConfig",
    "GateResult",
    "Revision",
    "WorkerError",
    "baseline_path",
    "check_baseline",
    "head_revision",
    "machine_class",
    "record_baseline",
    "resolve_base",
    "run_ab",
    "run_baseline",
    "source_tree",
]
