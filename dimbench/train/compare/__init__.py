"""``dimbench train-compare``: train backbones side by side under identical conditions.

- :mod:`.config`: the settings, presets and base defaults, validated before any work
- :mod:`.budget`: the budget (steps, training FLOPs, seconds) and the evaluation points
- :mod:`.widths`: each model's size, and ``--match params|flops`` width matching
- :mod:`.evaluation`: held-out set, quality probe, the measurements of one point
- :mod:`.run`: each model's ``Trainer`` advanced point by point through ``Trainer.fit``
- :mod:`.store`: ``train_compare.csv`` / ``.json``, and what a rerun resumes
- :mod:`.ui`: progress bars and printed lines; :mod:`.summary`: ``summary.md``

The figures are drawn by the command (:mod:`dimbench.plots.training`).
"""

import importlib

# name -> its module, imported on first use: the command line reads CompareConfig's defaults
# without importing torch (the run, the evaluation and the width matching need it)
_EXPORTS = {
    "Budget": "budget",
    "Point": "budget",
    "evaluation_points": "budget",
    "parse_budget": "budget",
    "BASE": "config",
    "PRESETS": "config",
    "CompareConfig": "config",
    "resolve": "config",
    "validate": "config",
    "CompareRun": "run",
    "ModelRun": "run",
    "run_compare": "run",
    "PlannedModel": "widths",
    "match_summary": "widths",
    "match_width": "widths",
    "plan_models": "widths",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
