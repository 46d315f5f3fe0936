"""Memory suite: peak memory of one configuration.

GPU: ``max_memory_allocated`` and ``max_memory_reserved`` from the start of the model build to
the end of the last step. CPU: peak RSS above the measuring process's idle level (torch
imported, no model yet), over the same span, with glibc told to hand every block over 128 KiB
back to the kernel when it is freed (``MALLOC_MMAP_THRESHOLD_``): RSS then follows the live
tensors, as the CUDA allocator's ``max_memory_allocated`` does, instead of also counting the
freed memory malloc keeps, which depends on the allocation pattern more than on the model
(1.2 GB of a DiM-S/2 train step at 1024 px). The throughput suite's peak_mem_mb is the RSS a
process with malloc's default behaviour reaches. A forward pass is run once; a train step twice,
so the second step carries the optimizer state the first one created (its steady state).
"""

from __future__ import annotations

import dataclasses

from dimbench.bench.registry import register_suite
from dimbench.bench.spec import (
    MEMORY_COLUMNS,
    PARAMS_COLUMN,
    PREDICTED_PEAK_COLUMN,
    Config,
    Panel,
    Suite,
    SummaryColumn,
    fmt,
)

STEPS = {"forward": 1, "train": 2}
# blocks of at least this many bytes are mmap'd, and unmapped when freed (glibc mallopt)
MMAP_THRESHOLD = 128 * 1024


def worker_env(cfg: Config) -> dict[str, str]:
    return {} if cfg.device.startswith("cuda") else {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


def measure(cfg: Config) -> dict:
    import torch

    from dimbench.bench.workload import build_workload, warm_up_runtime
    from dimbench.measure.memory import PeakMemory

    warm_up_runtime(cfg.device)
    with PeakMemory(cfg.device, sample_interval_s=0.002) as mem:
        work = build_workload(cfg)
        for _ in range(STEPS[cfg.mode]):
            work.step()
        if cfg.device.startswith("cuda"):
            torch.cuda.synchronize(cfg.device)
    metrics = {
        "peak_mem_mb": mem.result.peak_mb,
        "peak_mem_reserved_mb": mem.result.reserved_mb,
        "peak_mem_method": mem.result.method,
        "params_m": work.params_m,
    }
    return {"metrics": metrics, "raw": {"memory": dataclasses.asdict(mem.result)}}


SUITE = register_suite(
    Suite(
        name="memory",
        measure=measure,
        columns={**MEMORY_COLUMNS, **PREDICTED_PEAK_COLUMN, **PARAMS_COLUMN},
        summary=(
            SummaryColumn("peak_mem_mb", "peak MB", ".0f"),
            SummaryColumn("peak_mem_reserved_mb", "reserved MB", ".0f"),
        ),
        row_line=lambda row: f"peak {fmt(row['peak_mem_mb'], '.0f')} MB",
        panels=(
            # without memory rows, the throughput runs' own peaks are drawn
            Panel(
                "peak_mem_mb",
                "Peak memory",
                "peak memory (MB)",
                fallback=("throughput",),
                device_ylabels=(
                    ("cpu", "peak memory (MB, RSS above idle)"),
                    ("cuda", "peak memory (MB, max allocated)"),
                ),
            ),
        ),
        worker_env=worker_env,
    )
)
