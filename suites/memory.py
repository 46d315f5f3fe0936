"""Memory suite: peak memory of one configuration.

GPU: ``max_memory_allocated`` and ``max_memory_reserved`` from the start of the model build to
the end of the last step. CPU: peak RSS above the measuring process's idle level (torch
imported, no model yet), over the same span. A forward pass is run once; a train step twice,
so the second step carries the optimizer state the first one created (its steady state).
"""

from __future__ import annotations

import dataclasses

from dimbench.suites import register_suite
from dimbench.suites.spec import (
    MEMORY_COLUMNS,
    PARAMS_COLUMN,
    Config,
    Panel,
    Suite,
    SummaryColumn,
    fmt,
)

STEPS = {"forward": 1, "train": 2}


def measure(cfg: Config) -> dict:
    import torch

    from dimbench.measure.memory import PeakMemory
    from dimbench.suites.workload import build_workload, warm_up_runtime

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
        "params_m": work.params_m,
    }
    return {"metrics": metrics, "raw": {"memory": dataclasses.asdict(mem.result)}}


SUITE = register_suite(
    Suite(
        name="memory",
        measure=measure,
        columns={**MEMORY_COLUMNS, **PARAMS_COLUMN},
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
    )
)
