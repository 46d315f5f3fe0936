"""The gate's rule: when does a benchmark count as slower than its baseline?

Both runs' samples are calibration-normalised (``Samples.normalise``). A benchmark regresses
only when both hold:

- the ratio of medians (now / baseline) exceeds ``1 + threshold``, and
- the difference is significant given both runs' spread: a one-sided Mann-Whitney U test
  (now slower than baseline) gives p < ``alpha``.

A ratio over the threshold that the spread does not support is "noisy", not a regression; a
significant speed-up past the threshold is "faster" (a hint to record a new baseline). The rank
test needs no normality and is unmoved by the few wild samples a shared machine produces.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import mannwhitneyu

DEFAULT_THRESHOLD = 0.15
DEFAULT_ALPHA = 0.01

OK, FASTER, NOISY, REGRESSION = "ok", "faster", "noisy", "regression"


@dataclass(frozen=True)
class Comparison:
    ratio: float  # median(now) / median(baseline), calibration-normalised
    p_slower: float  # one-sided p-value of "now is slower"
    p_faster: float
    spread_baseline: float  # IQR / median of the normalised samples
    spread_now: float
    verdict: str

    @property
    def regressed(self) -> bool:
        return self.verdict == REGRESSION


def relative_spread(samples: Sequence[float]) -> float:
    """Interquartile range over the median (0 for fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return (q3 - q1) / med if med > 0 else float("inf")


def compare(
    baseline: Sequence[float],
    now: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Compare two sets of normalised samples of one benchmark (see the module docstring)."""
    if not baseline or not now:
        raise ValueError("both runs need at least one sample")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    ratio = statistics.median(now) / statistics.median(baseline)
    p_slower = float(mannwhitneyu(now, baseline, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(now, baseline, alternative="less").pvalue)
    if ratio > 1 + threshold:
        verdict = REGRESSION if p_slower < alpha else NOISY
    elif ratio < 1 / (1 + threshold) and p_faster < alpha:
        verdict = FASTER
    else:
        verdict = OK
    return Comparison(
        ratio=ratio,
        p_slower=p_slower,
        p_faster=p_faster,
        spread_baseline=relative_spread(baseline),
        spread_now=relative_spread(now),
        verdict=verdict,
    )
