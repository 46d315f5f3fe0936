"""Uncertainty over seeds: the mean with a 95% t-interval, and a paired t-test between two
models across seeds (a seed is the same data order and noise for every model, so the pairs
share what the seed decides)."""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its 95% t-interval (nan bounds for fewer than two values)."""

    mean: float
    lo: float
    hi: float
    n: int

    def text(self, fmt: str = ".4f") -> str:
        if self.n < 2:
            return f"{self.mean:{fmt}}"
        return f"{self.mean:{fmt}} [{self.lo:{fmt}}, {self.hi:{fmt}}]"


def mean_ci(values: list[float]) -> Interval:
    """The mean and its 95% t-interval over ``values`` (nan values dropped)."""
    import numpy as np
    from scipy import stats

    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if len(v) < 2:
        return Interval(mean, math.nan, math.nan, len(v))
    half = float(stats.t.ppf(1 - ALPHA / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Interval(mean, mean - half, mean + half, len(v))


def paired_p(a: dict[int, float], b: dict[int, float]) -> tuple[float, int]:
    """Two-sided p-value of a paired t-test of ``a`` against ``b`` over the seeds both have,
    and that count (nan below two seeds; 0 when every difference is the same, non-zero)."""
    from scipy import stats

    seeds = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    if len(seeds) < 2:
        return math.nan, len(seeds)
    d = [a[s] - b[s] for s in seeds]
    if all(x == d[0] for x in d):
        return (1.0 if d[0] == 0 else 0.0), len(seeds)
    return float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue), len(seeds)
