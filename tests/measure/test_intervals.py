import random
import statistics

import pytest

from dimbench.measure.intervals import (
    binomial_cdf,
    bootstrap_ci,
    coverage,
    half_width,
    median_ci,
    median_ranks,
)


def test_median_ranks_match_the_binomial_table():
    # the classic table of distribution-free 95 % intervals for the median (1-based ranks)
    assert median_ranks(6) == (0, 5)  # 96.9 %
    assert median_ranks(10) == (1, 8)  # x_(2)..x_(9): 97.9 %
    assert median_ranks(20) == (5, 14)  # x_(6)..x_(15): 95.9 %
    for n in range(6, 60):
        assert coverage(n) >= 0.95
        lo, hi = median_ranks(n)
        # one rank narrower would fall below 95 %
        assert 1 - 2 * binomial_cdf(lo + 1, n) < 0.95 or lo == (n - 1) // 2


def test_few_samples_give_min_and_max_with_their_lower_coverage():
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert coverage(5) == pytest.approx(1 - 2 / 32)
    assert median_ci([7.0]) == (7.0, 7.0)
    with pytest.raises(ValueError):
        median_ci([])


def test_median_ci_covers_the_true_median_about_95_percent():
    rng = random.Random(1)
    hits = 0
    for _ in range(2000):
        xs = [rng.expovariate(1.0) for _ in range(15)]  # skewed: median ln 2
        lo, hi = median_ci(xs)
        hits += lo <= 0.6931 <= hi
    assert 0.94 <= hits / 2000 <= 0.995


def test_bootstrap_is_reproducible_and_brackets_the_statistic():
    xs = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.98]
    lo, hi = bootstrap_ci(xs)
    assert (lo, hi) == bootstrap_ci(xs)  # fixed seed
    assert lo <= statistics.median(xs) <= hi and lo < hi
    assert bootstrap_ci([2.0, 2.0]) == (2.0, 2.0)


def test_half_width_is_relative_to_the_centre():
    assert half_width(90.0, 110.0, 100.0) == pytest.approx(0.1)
    assert half_width(1.0, 2.0, 0.0) == float("inf")
