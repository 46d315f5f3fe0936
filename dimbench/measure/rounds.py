"""Interleaved, shuffled rounds over long-lived workers, and the rule that ends them.

Every round runs every name of every worker once, in one freshly shuffled order over all
(worker, name) pairs: which worker goes first, and what runs next to what, changes from round to
round. Slow drifts of the machine (another process starting, the clock changing) so land on all
workers alike instead of on whichever happened to run at the time. Consecutive pairs of one
worker go to it as one request. The speed gate (``regress``: base and head, cases and
calibration kernels) and the paired cells of ``dimbench run`` (``bench.cell``: one worker per
model, one timed step each) both measure this way.

A worker that fails can be dropped (``failed``): its samples so far are kept, the others go on.
``StopRule`` ends the rounds: never before ``min_rounds``, always at ``max_rounds``, and in
between once the time budget is spent and every interval is within its target.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dimbench.measure.intervals import CI_TARGET, half_width, median_ci


class Timed(Protocol):
    """What the rounds need of a worker: its names, and one sample of each of some."""

    @property
    def names(self) -> list[str]: ...

    def time(self, names: Sequence[str]) -> dict[str, float]: ...


Samples = list[dict[str, list[float]]]  # per worker, each of its names' samples in round order


@dataclass(frozen=True)
class StopRule:
    """When a cell's rounds end (``budget_s``: seconds of timed work per worker, None: none)."""

    min_rounds: int
    max_rounds: int
    budget_s: float | None = None
    target: float = CI_TARGET

    def __post_init__(self) -> None:
        if not 1 <= self.min_rounds:
            raise ValueError(f"min_rounds must be >= 1, got {self.min_rounds}")

    def done(self, rounds: int, samples: Samples, spent_s: float) -> bool:
        if rounds >= self.max_rounds:
            return True
        if rounds < self.min_rounds:
            return False
        if self.budget_s is None or spent_s < self.budget_s:
            return False
        return widest(samples) <= self.target


def widest(samples: Samples) -> float:
    """The widest relative half-width of the medians' intervals (0 with no samples)."""
    widths = [
        half_width(*median_ci(xs), statistics.median(xs))
        for per_worker in samples
        for xs in per_worker.values()
        if xs
    ]
    return max(widths, default=0.0)


def interleave(
    sides: Sequence[Timed],
    rounds: int,
    seed: int = 0,
    on_round: Callable[[int], None] | None = None,
    *,
    stop: StopRule | None = None,
    failed: dict[int, Exception] | None = None,
) -> Samples:
    """Up to ``rounds`` rounds over ``sides`` (all of them without ``stop``, else until it says
    so); per side, each of its names' samples in round order. With ``failed`` given, a side
    whose ``time`` raises is left out of the later rounds and its error kept there (by its
    index); without, the error propagates."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    rng = random.Random(seed)
    samples: Samples = [{n: [] for n in side.names} for side in sides]
    pairs = [(i, name) for i, side in enumerate(sides) for name in side.names]
    spent = [0.0] * len(sides)
    for r in range(rounds):
        rng.shuffle(pairs)
        for i, run in itertools.groupby(pairs, key=lambda pair: pair[0]):
            t0 = time.perf_counter()
            try:
                times = sides[i].time([name for _, name in run])
            except Exception as e:
                if failed is None:
                    raise
                failed[i] = e
                continue
            spent[i] += time.perf_counter() - t0
            for name, seconds in times.items():
                samples[i][name].append(seconds)
        if failed:
            pairs = [p for p in pairs if p[0] not in failed]
        if on_round is not None:
            on_round(r + 1)
        if not pairs:
            break
        live = sorted({i for i, _ in pairs})
        spent_s = min(spent[i] for i in live)
        if stop is not None and stop.done(r + 1, [samples[i] for i in live], spent_s):
            break
    return samples
