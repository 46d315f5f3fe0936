"""How long every model of a comparison trains (``--budget``: steps, training FLOPs or
training seconds) and where along the way it is evaluated."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from dimbench.errors import UsageError

SECONDS_WARMUP = 100  # default warm-up steps under a time budget (the step count is unknown)

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}
_TIME = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
}
_NUM = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Budget:
    """How long every model trains: optimisation steps, training FLOPs, or training seconds."""

    unit: str
    value: float

    def __str__(self) -> str:
        if self.unit == "steps":
            return f"{int(self.value)} steps"
        if self.unit == "flops":
            return f"{self.value:.3g} training FLOPs"
        return f"{self.value:g} s of training"


def parse_budget(text: str) -> Budget:
    """``2000`` / ``2000steps`` -> steps; ``2e15``, ``2PF``, ``300TFLOPs`` -> FLOPs;
    ``600s``, ``10m``, ``1.5h`` -> seconds of training (evaluation not counted)."""
    s = str(text).strip().replace("_", "").replace(" ", "")
    steps = re.fullmatch(r"(\d+)(?:steps?)?", s, re.IGNORECASE)
    timed = re.fullmatch(_NUM + r"([a-z]+)", s, re.IGNORECASE)
    flops = re.fullmatch(_NUM + r"(e[+-]?\d+)?([kmgtpe]?)(f|flop|flops)?", s, re.IGNORECASE)
    if steps:
        value, unit = float(steps.group(1)), "steps"
    elif timed and timed.group(2).lower() in _TIME:
        value, unit = float(timed.group(1)) * _TIME[timed.group(2).lower()], "seconds"
    elif flops and any(flops.group(i) for i in (2, 3, 4)):
        scale = _SI[(flops.group(3) or "").lower()]
        value, unit = float(flops.group(1) + (flops.group(2) or "")) * scale, "flops"
    else:
        raise UsageError(
            f"--budget {text!r}: use STEPS (2000), FLOPs (2e15, 2PF, 300TFLOPs) or "
            "SECONDS (600s, 10m, 1h)"
        )
    if value <= 0:
        raise UsageError(f"--budget {text!r} must be positive")
    return Budget(unit, value)


class Trained(Protocol):
    """What the budget needs of a model (``widths.PlannedModel`` is one): its name and the
    FLOPs of one training step."""

    label: str
    train_flops_per_step: int


@dataclass(frozen=True)
class Point:
    """An evaluation point: index k of n; ``steps`` target (None under a time budget)."""

    index: int
    fraction: float
    steps: int | None
    seconds: float | None
    quality: bool


def evaluation_points(budget: Budget, spec: Trained, evals: int, fid_every: int) -> list[Point]:
    """Point 0 (before training), then ``evals`` points evenly over the budget in its unit."""
    if budget.unit == "seconds":
        total = None
    elif budget.unit == "steps":
        total = int(budget.value)
    else:
        total = math.floor(budget.value / spec.train_flops_per_step)
    if total is not None and total < evals:
        raise UsageError(
            f"--budget {budget} gives {spec.label} {total} steps, fewer than --evals {evals} "
            f"(one training step of it costs {spec.train_flops_per_step:.3g} FLOPs)"
        )
    points = [Point(0, 0.0, 0, 0.0 if total is None else None, False)]
    for k in range(1, evals + 1):
        f = k / evals
        if total is None:
            steps, seconds = None, budget.value * f
        elif budget.unit == "steps":
            steps, seconds = round(total * f), None
        else:  # FLOPs: the step at which this model has used a fraction f of the budget
            steps, seconds = min(total, round(budget.value * f / spec.train_flops_per_step)), None
        points.append(Point(k, f, steps, seconds, k % fid_every == 0 or k == evals))
    return points


def default_warmup(budget: Budget, specs: list[Trained], evals: int) -> int:
    """Warm-up steps when none is given: a tenth of the shortest model's run, at most 5000
    (``SECONDS_WARMUP`` under a time budget)."""
    if budget.unit == "seconds":
        return SECONDS_WARMUP
    shortest = min(evaluation_points(budget, s, evals, fid_every=1)[-1].steps for s in specs)
    return max(1, min(5000, shortest // 10))
