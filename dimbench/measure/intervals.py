"""Confidence intervals of the numbers a sweep reports.

- ``median_ci``: the 95 % interval of a median from order statistics (distribution-free: the
  number of samples below the true median is Binomial(n, 1/2) whatever the distribution).
  Below six samples no pair of order statistics covers 95 %; the widest one, (min, max), is
  returned then, with its coverage 1 - 2^(1-n) (94 % at n = 5).
- ``bootstrap_ci``: the percentile bootstrap of a statistic, resampling with a fixed seed, so
  the same samples always give the same interval (used for paired ratios over rounds).
- ``half_width``: an interval's half-width relative to its centre value, the figure the stop
  rule and the warnings compare with ``CI_TARGET``.

Pure Python (no numpy): the parent of a sweep and the workers both use it on a few dozen values.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence

CONFIDENCE = 0.95
CI_TARGET = 0.10  # a cell's intervals are tight enough once every half-width is within 10 %
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def binomial_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


def median_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted samples bounding the median's interval: the
    narrowest symmetric pair covering ``confidence``, else (0, n - 1)."""
    if n < 1:
        raise ValueError("no samples")
    lo = 0
    # [x_(k), x_(n-1-k)] holds the median unless at most k samples fall on one side of it:
    # coverage 1 - 2 P(B <= k), B the samples below the median
    for k in range(1, (n - 1) // 2 + 1):
        if 1 - 2 * binomial_cdf(k, n) < confidence:
            break
        lo = k
    return lo, n - 1 - lo


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(lo, hi): the order-statistic interval of the median of ``samples``."""
    xs = sorted(samples)
    lo, hi = median_ranks(len(xs), confidence)
    return xs[lo], xs[hi]


def coverage(n: int, confidence: float = CONFIDENCE) -> float:
    """The probability that ``median_ci`` of n samples covers the true median."""
    lo, _ = median_ranks(n, confidence)
    return 1 - 2 * binomial_cdf(lo, n)


def bootstrap_ci(
    samples: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.median,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """(lo, hi): the percentile bootstrap interval of ``statistic`` over ``samples``."""
    if not samples:
        raise ValueError("no samples")
    rng = random.Random(seed)
    n = len(samples)
    stats = sorted(
        statistic([samples[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples)
    )
    tail = (1 - confidence) / 2
    return stats[int(tail * (resamples - 1))], stats[math.ceil((1 - tail) * (resamples - 1))]


def half_width(lo: float, hi: float, centre: float) -> float:
    """(hi - lo) / 2 relative to ``centre`` (inf for a centre of 0)."""
    return (hi - lo) / 2 / centre if centre else math.inf


def ratio_of_medians_ci(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """(lo, hi) of median(numerator) / median(denominator) for two independent sets of samples:
    each resampled on its own (the unpaired case; paired samples bootstrap their per-pair
    ratios with ``bootstrap_ci``)."""
    if not numerator or not denominator:
        raise ValueError("no samples")
    rng = random.Random(seed)

    def resampled(xs: Sequence[float]) -> float:
        return statistics.median([xs[rng.randrange(len(xs))] for _ in xs])

    stats = sorted(resampled(numerator) / resampled(denominator) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return stats[int(tail * (resamples - 1))], stats[math.ceil((1 - tail) * (resamples - 1))]
