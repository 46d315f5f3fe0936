"""Latency of a callable: warm-up first, then timed repeats; median and IQR, raw samples kept.

On CUDA every repeat is bracketed by CUDA events (the GPU's own clock, no host jitter) and
synchronised; on the CPU ``time.perf_counter`` brackets it (both clocks from ``clocks``). A time
budget stops the repeats early on slow configurations (a 1536-px forward on a 2-core CPU takes
many seconds) while keeping at least ``min_repeats`` samples, so a sweep's length stays bounded.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from dimbench.measure.clocks import PERF_COUNTER, CpuClock, CudaClock, device_clock


@dataclass
class Timing:
    """Samples in milliseconds and their summary."""

    samples_ms: list[float]
    warmup_ms: list[float] = field(default_factory=list)
    clock: str = PERF_COUNTER  # or clocks.CUDA_EVENTS

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def q1_ms(self) -> float:
        return quantile(self.samples_ms, 0.25)

    @property
    def q3_ms(self) -> float:
        return quantile(self.samples_ms, 0.75)

    @property
    def iqr_ms(self) -> float:
        """Interquartile range; 0 for a single sample (no spread was observed)."""
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def summary(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "iqr_ms": self.iqr_ms,
            "q1_ms": self.q1_ms,
            "q3_ms": self.q3_ms,
            "min_ms": self.min_ms,
            "repeats": len(self.samples_ms),
        }

    def to_dict(self) -> dict:
        return {**asdict(self), **self.summary()}


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), with no numpy import."""
    if not samples:
        raise ValueError("no samples")
    xs = sorted(samples)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def make_clock(device: str = "cpu") -> CpuClock | CudaClock:
    """CUDA events for a CUDA device (each call starts on an idle device: synchronised first),
    ``perf_counter`` otherwise."""
    return device_clock(device, cpu=PERF_COUNTER, synchronize=True)


def time_fn(
    fn: Callable[[], object],
    *,
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    min_repeats: int = 1,
    clock=None,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed-for-the-result, then up to ``repeats`` timed times.

    ``budget_s`` bounds the time spent in timed repeats: a repeat that would, at the median so
    far, end past the budget is not started (``min_repeats`` always run). Warm-up calls are
    timed as well and kept in ``warmup_ms``, since the first call's cost (allocation, kernel
    selection) is a figure of its own.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    clock = clock or make_clock(device)
    warm = [clock.time(fn) for _ in range(max(0, warmup))]
    samples: list[float] = []
    spent_ms = 0.0
    for i in range(repeats):
        # Predict whether one more call fits the budget from the median so far.
        if budget_s is not None and i >= min_repeats:
            expected = statistics.median(samples)
            if spent_ms + expected > budget_s * 1e3:
                break
        ms = clock.time(fn)
        samples.append(ms)
        spent_ms += ms
    return Timing(samples_ms=samples, warmup_ms=warm, clock=clock.name)
