"""Device clocks: the one place dimbench reads a clock to time work on a device.

Measurement (``timing``), calibration (``calibrate``), the speed gate's worker
(``regress/worker.py``) and the GPU runbook (``tools/gpu_check.py``, through ``timing``) take
their clocks from here; each keeps its own choice of clock:

- ``perf_counter``: the wall clock (measurement on the CPU, calibration's ``--clock wall``);
- ``process_time``: this process's CPU time (the gate on the CPU, calibration's ``--clock
  process``): on a shared machine it leaves out the time other processes hold the core;
- ``cuda_events``: a pair of CUDA events around the work, the GPU's own clock, read once the end
  event has completed. ``synchronize=True`` first waits until the device has finished the work
  already queued, so that a span starts on an idle device and times a call as a lone call sees
  it, launches included (measurement); the gate and calibration time calls queued back to back
  and leave it off.

``clock.span()`` brackets work (``with clock.span() as span: ...``); its ``seconds`` and ``ms``
are read after it closes (a CUDA span waits for its end event then, so spans can be read in a
batch after one synchronisation). ``clock.time(fn)`` is the milliseconds of one call.

This module imports nothing from ``dimbench``, and torch only when a CUDA clock is made. The
gate's worker runs inside the source tree of the side it times (the base revision's or the
head's ``dimbench`` is first on ``sys.path``) and must time both sides with the same code: it
loads this file by its path from the head's tree, as it loads the head's ``cases.py``. An import
of ``dimbench`` here would bring in the side's package, which may predate this file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PERF_COUNTER = "perf_counter"
PROCESS_TIME = "process_time"
CUDA_EVENTS = "cuda_events"
CPU_CLOCKS: dict[str, Callable[[], float]] = {
    PERF_COUNTER: time.perf_counter,
    PROCESS_TIME: time.process_time,
}


class CpuSpan:
    """The CPU clock's reading at the start and the end of a ``with`` block (seconds)."""

    __slots__ = ("_now", "start", "end")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.start = self.end = 0.0

    def __enter__(self) -> CpuSpan:
        self.start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = self._now()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1e3


class CudaSpan:
    """Two CUDA timing events recorded at the start and the end of a ``with`` block."""

    __slots__ = ("_torch", "_device", "_synchronize", "start", "end")

    def __init__(self, torch: Any, device: object, synchronize: bool) -> None:
        self._torch = torch
        self._device = device
        self._synchronize = synchronize
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> CudaSpan:
        if self._synchronize:
            self._torch.cuda.synchronize(self._device)
        self.start.record()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end.record()

    @property
    def ms(self) -> float:
        """Waits for the end event; ``elapsed_time`` is in milliseconds."""
        self.end.synchronize()
        return self.start.elapsed_time(self.end)

    @property
    def seconds(self) -> float:
        return self.ms / 1e3


class CpuClock:
    """A CPU clock by name: ``perf_counter`` (wall) or ``process_time`` (this process's CPU)."""

    def __init__(self, name: str = PERF_COUNTER) -> None:
        if name not in CPU_CLOCKS:
            raise ValueError(f"unknown CPU clock {name!r}; valid: {', '.join(CPU_CLOCKS)}")
        self.name = name
        self.now = CPU_CLOCKS[name]  # seconds

    def span(self) -> CpuSpan:
        return CpuSpan(self.now)

    def time(self, fn: Callable[[], object]) -> float:
        """Milliseconds of one call of ``fn``."""
        with self.span() as span:
            fn()
        return span.ms


class CudaClock:
    """CUDA events on the current device; ``synchronize`` waits for ``device`` first."""

    name = CUDA_EVENTS

    def __init__(self, device: object = None, synchronize: bool = False) -> None:
        import torch

        self._torch = torch
        self.device = device
        self.synchronize = synchronize

    def span(self) -> CudaSpan:
        return CudaSpan(self._torch, self.device, self.synchronize)

    def time(self, fn: Callable[[], object]) -> float:
        """Milliseconds of one call of ``fn``."""
        with self.span() as span:
            fn()
        return span.ms


def is_cuda(device: object) -> bool:
    return str(device).startswith("cuda")


def device_clock(
    device: object = "cpu", cpu: str = PERF_COUNTER, synchronize: bool = False
) -> CpuClock | CudaClock:
    """CUDA events on a CUDA device (``synchronize``: see ``CudaClock``), else the CPU clock
    named ``cpu``."""
    if is_cuda(device):
        return CudaClock(device, synchronize=synchronize)
    return CpuClock(cpu)
