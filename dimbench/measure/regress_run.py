"""Measure the gate's benchmarks in interleaved rounds.

Every round runs every benchmark and every calibration kernel once, in a freshly shuffled order,
so slow drifts of the machine (another process starting, the clock changing) land on all of them
alike instead of on whichever benchmark happened to run at the time. Each benchmark's sample is
then divided by the calibration of its own round (``normalise``).

Clock: on the CPU the process's CPU time (``time.process_time``), with torch pinned to one
thread. On a shared machine the wall clock also counts the time other processes hold the core,
which is most of it at a load of 4 per core; CPU time counts only this process's work, so only
the second-order effects of sharing (caches, memory bandwidth) remain, and the calibration
kernels see those too. On CUDA the wall clock between synchronisations.

Heap: glibc returns large freed blocks to the kernel (``mmap``/trim) and takes them back with a
page fault per 4 KiB page on the next allocation. On a busy machine those faults cost 1x to 6x a
small kernel's own time, and vary from run to run. ``keep_heap`` tells malloc to keep its memory,
as a long-running training process effectively does, so the samples time the kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from dimbench.measure.regress_cases import Case

CPU_CLOCK = "process_time"
CUDA_CLOCK = "perf_counter+synchronize"
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


def running_median(values: Sequence[float], window: int) -> list[float]:
    """Centred running median; the window shrinks at the ends."""
    half = window // 2
    return [statistics.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's cap on 64-bit systems


@functools.cache
def keep_heap() -> bool:
    """Stop glibc malloc from returning freed memory to the kernel (see the module docstring);
    False where there is no glibc (the heap behaves as before)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and ok


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timer(device: torch.device) -> tuple[str, Callable[[Callable[[], object], int], float]]:
    """(clock name, time(fn, repeat) -> seconds per call)."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], object], repeat: int) -> float:
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            torch.cuda.synchronize(device)
            return (time.perf_counter() - t0) / repeat

        return CUDA_CLOCK, cuda_time

    def cpu_time(fn: Callable[[], object], repeat: int) -> float:
        t0 = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - t0) / repeat

    return CPU_CLOCK, cpu_time


def measure(
    cases: Sequence[Case],
    calibration: Sequence[Case],
    rounds: int,
    device: str | torch.device = "cpu",
    threads: int = 1,
    seed: int = 0,
    warmup: int = 2,
    on_round: Callable[[int], None] | None = None,
) -> Samples:
    """Run ``rounds`` interleaved rounds of ``cases`` and ``calibration`` (at least one)."""
    if not calibration:
        raise ValueError("the gate needs at least one calibration kernel")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = torch.device(device)
    clock, timed = _timer(device)
    heap_kept = keep_heap()
    everything = [*cases, *calibration]
    with torch_threads(threads):
        workloads = [case.setup(device) for case in everything]
        for case, fn in zip(everything, workloads, strict=True):
            for _ in range(warmup):  # first-use compiles, allocator and cache warm-up
                timed(fn, case.repeat)
        rng = random.Random(seed)
        samples: dict[str, list[float]] = {case.name: [] for case in everything}
        order = list(range(len(everything)))
        # A full collection walks every object torch and scipy made (~0.1 s); frozen, they are
        # skipped, so the collection before each round costs microseconds.
        gc.collect()
        gc.freeze()
        try:
            for r in range(rounds):
                rng.shuffle(order)
                gc.collect()
                gc.disable()  # a collection inside a sample would charge it to that benchmark
                try:
                    for i in order:
                        case = everything[i]
                        samples[case.name].append(timed(workloads[i], case.repeat))
                finally:
                    gc.enable()
                if on_round is not None:
                    on_round(r + 1)
        finally:
            gc.unfreeze()
    calib_names = {case.name for case in calibration}
    return Samples(
        times={k: v for k, v in samples.items() if k not in calib_names},
        calibration={k: v for k, v in samples.items() if k in calib_names},
        signatures={case.name: case.signature for case in everything},
        settings={
            "clock": clock,
            "threads": threads,
            "device_type": device.type,
            "rounds": rounds,
            "seed": seed,
            "warmup": warmup,
            "heap_kept": heap_kept,
            "normalisation": f"geomean of calibration, running median of {SMOOTHING_ROUNDS}",
        },
    )
