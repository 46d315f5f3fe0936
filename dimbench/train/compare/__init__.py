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

from dimbench.train.compare.budget import Budget, Point, evaluation_points, parse_budget
from dimbench.train.compare.config import BASE, PRESETS, CompareConfig, resolve, validate
from dimbench.train.compare.run import CompareRun, ModelRun, run_compare
from dimbench.train.compare.widths import PlannedModel, match_summary, match_width, plan_models

__all__ = [
    "BASE",
    "PRESETS",
    "Budget",
    "CompareConfig",
    "CompareRun",
    "ModelRun",
    "PlannedModel",
    "Point",
    "evaluation_points",
    "match_summary",
    "match_width",
    "parse_budget",
    "plan_models",
    "resolve",
    "run_compare",
    "validate",
]
