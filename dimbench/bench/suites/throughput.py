"""Throughput suite: images/s and latency (median, IQR) of one configuration, plus the latency
of a full guided sampling run derived from it, power and energy on a GPU.

Runs inside the measuring process (``dimbench.bench.worker``): warm-up, then timed repeats
under a time budget; telemetry covers the timed repeats only.
"""

from __future__ import annotations

import dataclasses
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
    "latency_iqr_ms": "interquartile range of those latencies (0 with a single repeat)",
    "repeats": "timed repeats behind the median (after warm-up)",
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
    "cpu_util_pct": "this process's CPU use over the timed region, % of one core",
    "system_cpu_pct": "the whole machine's CPU use over the timed region, % of all cores",
}


def measure(cfg: Config) -> dict:
    import torch

    from dimbench.bench.workload import build_workload, warm_up_runtime
    from dimbench.measure import count_flops
    from dimbench.measure.memory import PeakMemory
    from dimbench.measure.telemetry import CpuTelemetry, GpuTelemetry
    from dimbench.measure.timing import make_clock, time_fn

    on_gpu = cfg.device.startswith("cuda")
    # High-water mark only on the CPU: a sampling thread would steal time from the timed work.
    warm_up_runtime(cfg.device)
    with PeakMemory(cfg.device, sample_interval_s=None) as mem:
        work = build_workload(cfg)
        clock = make_clock(cfg.device)
        warm = [clock.time(work.step) for _ in range(cfg.warmup)]
        with CpuTelemetry() as cpu, GpuTelemetry(cfg.device) if on_gpu else nullcontext() as gpu:
            timing = time_fn(
                work.step,
                warmup=0,
                repeats=cfg.repeats,
                budget_s=cfg.budget_s,
                min_repeats=1,
                clock=clock,
            )
    timing.warmup_ms = warm
    median_s = timing.median_ms / 1e3
    images = work.images_per_step * len(timing.samples_ms)
    counted = count_flops(cfg.model, cfg.image_size, cfg.batch_size, mode=cfg.mode)  # on meta
    metrics = {
        "gmacs": counted["gmacs"],
        "gflops": counted["gflops"],
        "achieved_gflops_per_s": counted["gflops"] / median_s,
        "imgs_per_s": work.images_per_step / median_s,
        "latency_ms": timing.median_ms,
        "latency_iqr_ms": timing.iqr_ms,
        "repeats": len(timing.samples_ms),
        "sample_steps": cfg.sample_steps,
        "sample_latency_s": cfg.sample_steps * 2 * median_s,
        "peak_mem_mb": mem.result.peak_mb,
        "peak_mem_reserved_mb": mem.result.reserved_mb,
        "peak_mem_method": mem.result.method,
        "params_m": work.params_m,
        **cpu.summary(),
    }
    raw = {"timing": timing.to_dict(), "memory": dataclasses.asdict(mem.result)}
    if on_gpu:
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
    return {"metrics": metrics, "raw": raw}


def row_line(row: dict) -> str:
    return (
        f"{fmt(row['imgs_per_s'], '.3g')} img/s  {fmt(row['latency_ms'], '.1f')} ms "
        f"(IQR {fmt(row['latency_iqr_ms'], '.1f')}, n={row['repeats']})  "
        f"{fmt(row['achieved_gflops_per_s'], '.3g')} GFLOP/s  "
        f"peak {fmt(row['peak_mem_mb'], '.0f')} MB"
    )


SUITE = register_suite(
    Suite(
        name="throughput",
        measure=measure,
        columns=COLUMNS,
        summary=(
            SummaryColumn("imgs_per_s", "img/s", ".3g"),
            SummaryColumn("latency_ms", "latency ms", ".1f"),
            SummaryColumn("latency_iqr_ms", "IQR ms", ".1f"),
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
