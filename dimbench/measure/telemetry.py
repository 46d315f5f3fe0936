"""Telemetry over a timed region.

``GpuTelemetry``: a thread samples NVML (nvidia-ml-py) for board power, GPU utilisation, SM clock
and temperature; the energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since
driver load) is read at both ends, and where the board has none the power samples are
integrated instead. No NVML (no GPU, no driver, no package) is not an error: the summary is empty.

``CpuTelemetry``: this process's CPU use and the whole machine's, so a reader can tell a timing
taken on a busy machine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class GpuSample:
    t_s: float
    power_w: float | None
    util_pct: float | None
    sm_clock_mhz: float | None
    temp_c: float | None


def _nvml_index(device: str) -> int:
    """NVML's index for a torch device string, honouring CUDA_VISIBLE_DEVICES when torch can."""
    index = int(device.split(":")[1]) if ":" in device else 0
    try:
        import torch

        return int(torch.cuda._get_nvml_device_index(index))
    except Exception:
        return index


def _read(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


class GpuTelemetry:
    """``with GpuTelemetry("cuda:0") as tel: ...`` then ``tel.summary()`` and ``tel.samples``."""

    def __init__(self, device: str = "cuda:0", interval_s: float = 0.05, nvml=None):
        self.device = device
        self.interval_s = interval_s
        self.samples: list[GpuSample] = []
        self.available = False
        self.error: str | None = None
        self._nvml = nvml  # injectable for tests
        self._energy_mj: list[float | None] = [None, None]
        self._t: list[float] = [0.0, 0.0]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> GpuTelemetry:
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(_nvml_index(self.device))
        except Exception as e:  # no library, no driver, no GPU
            self.error = f"{type(e).__name__}: {e}"
            return self
        self.available = True
        self._t[0] = time.perf_counter()
        self._energy_mj[0] = _read(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="nvml-sampler")
        self._thread.start()
        return self

    def _sample(self) -> GpuSample:
        nv, h = self._nvml, self._handle
        power_mw = _read(nv.nvmlDeviceGetPowerUsage, h)
        util = _read(nv.nvmlDeviceGetUtilizationRates, h)
        clock = _read(nv.nvmlDeviceGetClockInfo, h, getattr(nv, "NVML_CLOCK_SM", 1))
        temp = _read(nv.nvmlDeviceGetTemperature, h, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        return GpuSample(
            t_s=time.perf_counter() - self._t[0],
            power_w=power_mw / 1e3 if power_mw is not None else None,
            util_pct=float(util.gpu) if util is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            temp_c=float(temp) if temp is not None else None,
        )

    def _loop(self) -> None:
        while True:
            self.samples.append(self._sample())
            if self._stop.wait(self.interval_s):
                return

    def __exit__(self, *exc) -> None:
        if not self.available:
            return
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample())
        self._t[1] = time.perf_counter()
        self._energy_mj[1] = _read(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle)
        _read(self._nvml.nvmlShutdown)

    @property
    def duration_s(self) -> float:
        return self._t[1] - self._t[0]

    def energy_j(self) -> tuple[float | None, str]:
        """Energy over the region and where it came from ("counter" or "power_integral")."""
        e0, e1 = self._energy_mj
        if e0 is not None and e1 is not None and e1 >= e0:
            return (e1 - e0) / 1e3, "counter"
        pts = [(s.t_s, s.power_w) for s in self.samples if s.power_w is not None]
        if len(pts) < 2:
            return None, "none"
        joules = sum(
            (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False)
        )
        return joules, "power_integral"

    def summary(self) -> dict:
        """Row columns: means over the region (temperature: the maximum), energy in joules."""
        if not self.available:
            return {}

        def values(attr):
            return [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]

        def mean(xs):
            return sum(xs) / len(xs) if xs else None

        energy, source = self.energy_j()
        return {
            "gpu_power_w": mean(values("power_w")),
            "gpu_power_max_w": max(values("power_w"), default=None),
            "gpu_util_pct": mean(values("util_pct")),
            "gpu_sm_clock_mhz": mean(values("sm_clock_mhz")),
            "gpu_temp_c": max(values("temp_c"), default=None),
            "energy_j": energy,
            "energy_source": source,
        }


class CpuTelemetry:
    """This process's CPU use (percent of one core, so 200 = two cores busy) and the whole
    machine's (percent of all cores) over the region."""

    def __enter__(self) -> CpuTelemetry:
        import psutil

        self._proc = psutil.Process()
        psutil.cpu_percent(None)  # starts the machine-wide interval
        self._cpu0 = self._proc.cpu_times()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        wall = max(time.perf_counter() - self._t0, 1e-9)
        cpu1 = self._proc.cpu_times()
        used = (cpu1.user - self._cpu0.user) + (cpu1.system - self._cpu0.system)
        self.process_pct = 100.0 * used / wall
        self.system_pct = psutil.cpu_percent(None)

    def summary(self) -> dict:
        return {"cpu_util_pct": self.process_pct, "system_cpu_pct": self.system_pct}
