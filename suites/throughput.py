"""Throughput suite: images/s and latency (median, IQR) of one configuration, plus the latency
of a full guided sampling run derived from it, power and energy on a GPU.

Runs inside the measuring process (``dimbench.suites.worker``): warm-up, then timed repeats
under a time budget; telemetry covers the timed repeats only.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

from dimbench.suites.spec import Config, Suite


def measure(cfg: Config) -> dict:
    import torch
    from dimbench.suites.workload import build_workload, warm_up_runtime

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
    metrics = {
        "imgs_per_s": work.images_per_step / median_s,
        "latency_ms": timing.median_ms,
        "latency_iqr_ms": timing.iqr_ms,
        "repeats": len(timing.samples_ms),
        "sample_steps": cfg.sample_steps,
        "sample_latency_s": cfg.sample_steps * 2 * median_s,
        "peak_mem_mb": mem.result.peak_mb,
        "peak_mem_reserved_mb": mem.result.reserved_mb,
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


SUITE = Suite(
    name="throughput",
    help="images/s and latency (median, IQR); sampling-run latency; GPU power and energy",
    measure=measure,
    metric="imgs_per_s",
    ylabel="throughput (images / s)",
)
