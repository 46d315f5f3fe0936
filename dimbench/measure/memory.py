"""Peak memory of a region of code.

GPU: ``torch.cuda.max_memory_allocated`` (live tensors) and ``max_memory_reserved`` (what the
caching allocator holds) after a reset at the start of the region.

CPU: peak resident set size above the level the process had when the region began (its idle
level: interpreter and torch loaded, no model yet). The kernel's high-water mark
(``getrusage`` ``ru_maxrss``) is exact when the region sets a new high; a sampling thread covers
the case where it does not (import-time transients can exceed a tiny model's peak).
Measure one configuration per process: RSS is a whole-process figure.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

MB = 1024 * 1024


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return psutil.Process().memory_info().rss


def max_rss_bytes() -> int:
    """This process's resident-set high-water mark so far."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float):
        super().__init__(daemon=True, name="rss-sampler")
        self.interval_s = interval_s
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, proc.memory_info().rss)
            if self._stop_event.wait(self.interval_s):
                self.peak = max(self.peak, proc.memory_info().rss)
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass
class MemoryResult:
    peak_mb: float  # GPU: max allocated; CPU: peak RSS above the idle level
    reserved_mb: float | None  # GPU: max reserved by the caching allocator; CPU: None
    idle_mb: float | None  # CPU: RSS when the region began
    peak_abs_mb: float | None  # CPU: the peak RSS itself
    method: str  # how the peak was found


class PeakMemory:
    """``with PeakMemory("cpu") as pm: ...`` then ``pm.result``.

    ``sample_interval_s`` starts an RSS-sampling thread on the CPU (``None``: high-water mark
    only, which costs nothing while timing).
    """

    def __init__(self, device: str = "cpu", sample_interval_s: float | None = 0.002):
        self.device = str(device)
        self.is_cuda = self.device.startswith("cuda")
        self.sample_interval_s = sample_interval_s
        self.result: MemoryResult | None = None
        self._sampler: _RssSampler | None = None

    def __enter__(self) -> PeakMemory:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._idle = rss_bytes()
        self._hwm_at_start = max_rss_bytes()
        if self.sample_interval_s is not None:
            self._sampler = _RssSampler(self.sample_interval_s)
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.result = MemoryResult(
                peak_mb=torch.cuda.max_memory_allocated(self.device) / MB,
                reserved_mb=torch.cuda.max_memory_reserved(self.device) / MB,
                idle_mb=None,
                peak_abs_mb=None,
                method="torch.cuda.max_memory_allocated",
            )
            return
        sampled = self._sampler.stop() if self._sampler is not None else 0
        hwm = max_rss_bytes()
        if hwm > self._hwm_at_start:
            # A new high was set inside the region: the kernel's figure is exact.
            peak, method = max(hwm, sampled), "ru_maxrss"
        elif self._sampler is not None:
            peak, method = sampled, "rss_sampling"
        else:
            peak, method = hwm, "ru_maxrss_upper_bound"
        if os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # set when the process started
            method += f" (MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']})"
        self.result = MemoryResult(
            peak_mb=max(0, peak - self._idle) / MB,
            reserved_mb=None,
            idle_mb=self._idle / MB,
            peak_abs_mb=peak / MB,
            method=method,
        )
