"""Measure the sides in interleaved, shuffled rounds.

Every round runs every case and every calibration kernel once in each side's process, in one
freshly shuffled order over all (side, case) pairs: which side goes first, and what runs next to
what, changes from round to round. Slow drifts of the machine (another process starting, the
clock changing) so land on both sides and on all cases alike instead of on whichever happened to
run at the time. Consecutive pairs of one side go to its worker as one request. Each case's
sample is then divided by its own side's calibration of the same round (``Samples.normalise``).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

SMOOTHING_ROUNDS = 5  # calibration is a running median over this many neighbouring rounds


class Timed(Protocol):
    """What the rounds need of a side: its case names, and one sample of each of some."""

    @property
    def names(self) -> list[str]: ...

    def time(self, names: Sequence[str]) -> dict[str, float]: ...


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


def interleave(
    sides: Sequence[Timed],
    rounds: int,
    seed: int = 0,
    on_round: Callable[[int], None] | None = None,
) -> list[dict[str, list[float]]]:
    """``rounds`` rounds over ``sides``; per side, each of its names' samples in round order."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    rng = random.Random(seed)
    samples: list[dict[str, list[float]]] = [{n: [] for n in side.names} for side in sides]
    pairs = [(i, name) for i, side in enumerate(sides) for name in side.names]
    for r in range(rounds):
        rng.shuffle(pairs)
        for i, run in itertools.groupby(pairs, key=lambda pair: pair[0]):
            for name, seconds in sides[i].time([name for _, name in run]).items():
                samples[i][name].append(seconds)
        if on_round is not None:
            on_round(r + 1)
    return samples


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
