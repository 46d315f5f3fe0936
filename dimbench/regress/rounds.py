"""The sides' samples from interleaved, shuffled rounds (``dimbench.measure.rounds``, the
mechanism ``dimbench run``'s paired cells share): every round runs every case and every
calibration kernel once in each side's process, in one freshly shuffled order over all (side,
case) pairs. Each case's sample is then divided by its own side's calibration of the same round
(``Samples.normalise``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from dimbench.measure.rounds import Timed, interleave

__all__ = ["SMOOTHING_ROUNDS", "Samples", "Timed", "interleave", "running_median", "split"]

SMOOTHING_ROUNDS = 5  # calibration is a running median over this many neighbouring rounds


@dataclass
class Samples:
    """Seconds per call, one sample per round, for each benchmark and calibration kernel."""

    times: dict[str, list[float]]
    calibration: dict[str, list[float]]
    signatures: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return min((len(v) for v in self.calibration.values()), default=0)

    def calibration_per_round(self) -> list[float]:
        """The machine's speed in each round: the geometric mean of the calibration kernels'
        times, smoothed by a running median so one disturbed calibration sample does not
        disturb the benchmarks of its round."""
        if not self.calibration:
            raise ValueError("no calibration samples")
        per_round = [
            math.exp(statistics.fmean(math.log(s[r]) for s in self.calibration.values()))
            for r in range(self.rounds)
        ]
        return running_median(per_round, SMOOTHING_ROUNDS)

    def normalise(self) -> dict[str, list[float]]:
        """Each benchmark's samples in units of its round's calibration time."""
        cal = self.calibration_per_round()
        return {
            name: [t / c for t, c in zip(ts, cal, strict=False)] for name, ts in self.times.items()
        }

    def raw(self) -> dict:
        return {"times": self.times, "calibration": self.calibration}


def running_median(values: Sequence[float], window: int) -> list[float]:
    """Centred running median; the window shrinks at the ends."""
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def split(
    samples: dict[str, list[float]],
    calibration: set[str],
    signatures: dict[str, str],
    settings: dict,
) -> Samples:
    """One side's samples as benchmarks and calibration."""
    return Samples(
        times={k: v for k, v in samples.items() if k not in calibration},
        calibration={k: v for k, v in samples.items() if k in calibration},
        signatures=dict(signatures),
        settings=dict(settings),
    )
