"""The gate's rule: when does a benchmark count as slower on the head than on the base?

Both sides' samples are calibration-normalised (``Samples.normalise``). A benchmark regresses
only when both hold:

- the ratio of medians (head / base) exceeds ``1 + threshold``, and
- the difference is significant given both sides' spread: a one-sided Mann-Whitney U test
  (head slower than base) gives p < ``alpha``.

A ratio over the threshold that the spread does not support is "noisy", not a regression; a
significant speed-up past the threshold is "faster". The rank test needs no normality and is
unmoved by the few wild samples a shared machine produces. The base is the base revision
measured in the same run, or a stored baseline's samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import mannwhitneyu

# A/B in one run (issue 13, a shared 2-core machine): an unchanged tree read within 0.94..1.09 in
# 30 runs, busy neighbours included; the cpu scan made 15% slower read 1.08..1.17.
DEFAULT_THRESHOLD = 0.08
DEFAULT_ALPHA = 0.01

OK, FASTER, NOISY, REGRESSION = "ok", "faster", "noisy", "regression"


@dataclass(frozen=True)
class Comparison:
    ratio: float  # median(head) / median(base), calibration-normalised
    p_slower: float  # one-sided p-value of "the head is slower"
    p_faster: float
    spread_base: float  # IQR / median of the normalised samples
    spread_head: float
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
    base: Sequence[float],
    head: Sequence[float],
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Compare two sets of normalised samples of one benchmark (see the module docstring)."""
    if not base or not head:
        raise ValueError("both sides need at least one sample")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    ratio = statistics.median(head) / statistics.median(base)
    p_slower = float(mannwhitneyu(head, base, alternative="greater").pvalue)
    p_faster = float(mannwhitneyu(head, base, alternative="less").pvalue)
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
        spread_base=relative_spread(base),
        spread_head=relative_spread(head),
        verdict=verdict,
    )
