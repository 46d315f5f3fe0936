"""Every figure of a results folder (``dimbench plot DIR``): the scaling figures drawn from the
suites' declared panels and ratios, and the figure each suite declares of its own
(``Suite.figure``, e.g. the profile's)."""

from __future__ import annotations

import importlib
from pathlib import Path

from dimbench.errors import UsageError
from dimbench.plots.scaling import plot_scaling


def plot_results(
    results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), rows=None
) -> dict:
    """Draw every figure beside the CSVs in ``results_dir`` (from ``rows``, else its CSVs).
    Returns {"figures": [paths], "crossovers": {label: [Crossover]}} (``plot_scaling``'s)."""
    from dimbench.bench.registry import all_suites, schemas
    from dimbench.results import load_results

    rows = load_results(results_dir, schemas()) if rows is None else rows
    out = plot_scaling(results_dir, formats, rows)
    for suite in all_suites():
        if suite.figure and (rows["suite"] == suite.name).any():
            out["figures"] += figure_function(suite.figure)(Path(results_dir), formats, rows)
    return out


def figure_function(spec: str):
    """The function a ``Suite.figure`` names ("module:function")."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot load the figure {spec!r} a suite declares: {e}") from None
