"""Throughput suite: images/s and latency (median, IQR, 95 % interval) of one configuration,
plus the latency of a full guided sampling run derived from it, power and energy on a GPU.

Runs inside a measuring process: ``Stepper`` builds the workload and warms it up, then times one
step at a time. By default the models of a cell each get such a process and are timed in
interleaved rounds (``dimbench.bench.cell``); ``measure`` times one configuration alone
(``--unpaired``), where GPU telemetry covers its timed steps (a paired row has none: the board's
power over a cell's rounds is every model's).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext

from dimbench.bench.registry import register_suite
from dimbench.bench.spec import (
    FLOPS_COLUMNS,
    MEMORY_COLUMNS,
    PARAMS_COLUMN,
    PREDICTED_PEAK_COLUMN,
    Config,
    Panel,
    Ratio,
    Suite,
    SummaryColumn,
    fmt,
)

COLUMNS = {
    "imgs_per_s": "batch_size / median latency",
    "latency_ms": "median latency of one forward (or train step) over the timed repeats",
    "latency_ms_ci_lo": "95 % confidence interval of latency_ms, low end (order statistics of "
    "the timed repeats; below 6 repeats their min, with lower coverage)",
    "latency_ms_ci_hi": "95 % confidence interval of latency_ms, high end",
    "imgs_per_s_ci_lo": "95 % interval of imgs_per_s, low end (batch / latency_ms_ci_hi)",
    "imgs_per_s_ci_hi": "95 % interval of imgs_per_s, high end (batch / latency_ms_ci_lo)",
    "latency_iqr_ms": "interquartile range of those latencies (0 with a single repeat)",
    "repeats": "timed repeats behind the median (after warm-up): rounds of a paired cell",
    "paired": "true: measured in interleaved rounds with the other models of its cell (one "
    "timed step of each per round, shuffled order); false: alone in its process",
    "sample_steps": "sampler steps assumed for sample_latency_s",
    "sample_latency_s": "one guided sampling run: sample_steps x 2 (CFG) x latency_ms / 1000",
    **MEMORY_COLUMNS,
    **PREDICTED_PEAK_COLUMN,
    **PARAMS_COLUMN,
    **FLOPS_COLUMNS,
    "achieved_gflops_per_s": "gflops / median latency: the FLOP rate the step reached",
    "gpu_power_w": "mean board power over the timed region (NVML)",
    "gpu_power_max_w": "max board power over the timed region (NVML)",
    "gpu_util_pct": "mean GPU utilisation over the timed region (NVML)",
    "gpu_sm_clock_mhz": "mean SM clock over the timed region (NVML)",
    "gpu_temp_c": "max GPU temperature over the timed region (NVML)",
    "energy_j_per_img": "energy of the timed region / images processed (NVML energy counter)",
    "cpu_util_pct": "this process's CPU use over its timed steps, % of one core",
    "system_cpu_pct": "the whole machine's CPU use from the first timed step to the last "
    "(a paired cell: over all its models' rounds), % of all cores",
}


class Stepper:
    """One configuration's workload built and warmed up in this process, then timed one step at
    a time (``step``), by ``measure`` below or, in a paired cell, at the parent's request."""

    def __init__(self, cfg: Config) -> None:
        import psutil

        from dimbench.bench.workload import build_workload, warm_up_runtime
        from dimbench.measure.memory import PeakMemory
        from dimbench.measure.timing import make_clock

        self.cfg = cfg
        # High-water mark only on the CPU: a sampling thread would steal time from the timed work.
        warm_up_runtime(cfg.device)
        self._mem = PeakMemory(cfg.device, sample_interval_s=None)
        self._mem.__enter__()
        try:
            self.work = build_workload(cfg)
            self.clock = make_clock(cfg.device)
            self.warmup_ms = [self.clock.time(self.work.step) for _ in range(cfg.warmup)]
        except BaseException:
            self._mem.__exit__(None, None, None)
            raise
        self.samples_ms: list[float] = []
        self._cpu_s = self._wall_s = 0.0
        self._proc = psutil.Process()
        psutil.cpu_percent(None)  # the machine's CPU use from here to finish()

    def step(self) -> float:
        """Seconds of one timed step."""
        cpu0 = self._proc.cpu_times()
        t0 = time.perf_counter()
        ms = self.clock.time(self.work.step)
        self._wall_s += time.perf_counter() - t0
        cpu1 = self._proc.cpu_times()
        self._cpu_s += (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        self.samples_ms.append(ms)
        return ms / 1e3

    def finish(self) -> dict:
        """The row's metrics and raw samples from the steps so far."""
        import psutil

        from dimbench.measure import count_flops
        from dimbench.measure.intervals import median_ci
        from dimbench.measure.timing import Timing

        system_pct = psutil.cpu_percent(None)
        self._mem.__exit__(None, None, None)
        cfg, work, mem = self.cfg, self.work, self._mem
        timing = Timing(samples_ms=self.samples_ms, warmup_ms=self.warmup_ms, clock=self.clock.name)
        median_s = timing.median_ms / 1e3
        lo_ms, hi_ms = median_ci(timing.samples_ms)
        counted = count_flops(cfg.model, cfg.image_size, cfg.batch_size, mode=cfg.mode)  # on meta
        metrics = {
            "gmacs": counted["gmacs"],
            "gflops": counted["gflops"],
            "achieved_gflops_per_s": counted["gflops"] / median_s,
            "imgs_per_s": work.images_per_step / median_s,
            "imgs_per_s_ci_lo": work.images_per_step / (hi_ms / 1e3),
            "imgs_per_s_ci_hi": work.images_per_step / (lo_ms / 1e3),
            "latency_ms": timing.median_ms,
            "latency_ms_ci_lo": lo_ms,
            "latency_ms_ci_hi": hi_ms,
            "latency_iqr_ms": timing.iqr_ms,
            "repeats": len(timing.samples_ms),
            "sample_steps": cfg.sample_steps,
            "sample_latency_s": cfg.sample_steps * 2 * median_s,
            "peak_mem_mb": mem.result.peak_mb,
            "peak_mem_reserved_mb": mem.result.reserved_mb,
            "peak_mem_method": mem.result.method,
            "params_m": work.params_m,
            "cpu_util_pct": 100.0 * self._cpu_s / max(self._wall_s, 1e-9),
            "system_cpu_pct": system_pct,
        }
        raw = {"timing": timing.to_dict(), "memory": dataclasses.asdict(mem.result)}
        return {"metrics": metrics, "raw": raw}


def measure(cfg: Config) -> dict:
    """One configuration alone in its process (``--unpaired``, or a cell of one model): timed
    steps under the same stop rule as a paired cell's rounds."""
    import torch

    from dimbench.measure.rounds import StopRule
    from dimbench.measure.telemetry import GpuTelemetry

    on_gpu = cfg.device.startswith("cuda")
    stepper = Stepper(cfg)
    rule = StopRule(cfg.min_rounds, cfg.repeats, cfg.budget_s)
    spent = 0.0
    with GpuTelemetry(cfg.device) if on_gpu else nullcontext() as gpu:
        while not rule.done(len(stepper.samples_ms), [{cfg.model: stepper.samples_ms}], spent):
            spent += stepper.step()
    result = stepper.finish()
    metrics, raw = result["metrics"], result["raw"]
    if on_gpu:
        images = stepper.work.images_per_step * len(stepper.samples_ms)
        tel = gpu.summary()
        energy = tel.pop("energy_j", None)
        source = tel.pop("energy_source", None)
        metrics.update(tel)
        if energy is not None:
            metrics["energy_j_per_img"] = energy / images
        raw["telemetry"] = {
            "energy_j": energy,
            "energy_source": source,
            "nvml_error": gpu.error,
            "samples": [dataclasses.asdict(s) for s in gpu.samples],
        }
        raw["cuda_device"] = torch.cuda.get_device_name(cfg.device)
    return result


def row_line(row: dict) -> str:
    return (
        f"{fmt(row['imgs_per_s'], '.3g')} img/s  {fmt(row['latency_ms'], '.1f')} ms "
        f"[{fmt(row.get('latency_ms_ci_lo'), '.1f')}, {fmt(row.get('latency_ms_ci_hi'), '.1f')}] "
        f"n={row['repeats']}{' paired' if str(row.get('paired')).lower() == 'true' else ''}  "
        f"{fmt(row['achieved_gflops_per_s'], '.3g')} GFLOP/s  "
        f"peak {fmt(row['peak_mem_mb'], '.0f')} MB"
    )


SUITE = register_suite(
    Suite(
        name="throughput",
        measure=measure,
        stepper="dimbench.bench.suites.throughput:Stepper",
        columns=COLUMNS,
        summary=(
            SummaryColumn("imgs_per_s", "img/s", ".3g"),
            SummaryColumn("latency_ms", "latency ms", ".1f"),
            SummaryColumn("imgs_per_s_ci_lo", "img/s CI lo", ".3g"),
            SummaryColumn("imgs_per_s_ci_hi", "img/s CI hi", ".3g"),
            SummaryColumn("repeats", "n", ".0f"),
            SummaryColumn("sample_latency_s", "{sample_steps}-step CFG run s", ".1f"),
            SummaryColumn("achieved_gflops_per_s", "GFLOP/s", ".3g"),
            SummaryColumn("peak_mem_mb", "peak MB", ".0f"),
        ),
        row_line=row_line,
        panels=(Panel("imgs_per_s", "Throughput", "throughput (images / s)"),),
        ratio=Ratio(
            name="throughput",
            metric="imgs_per_s",
            higher_is_better=True,
            label="{model}/baseline throughput",
            heading="overtakes the baselines",
            crossing="overtakes {b} at about {x:.0f} px",
            ahead="is faster than {b} at every resolution ({span})",
            behind="is slower than {b} up to {hi} px (no crossover)",
        ),
    )
)
