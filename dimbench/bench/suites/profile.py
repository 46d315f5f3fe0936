"""Profile suite: where one step's time and memory go, per operator category and per block.

Runs in its own process per configuration (``dimbench.bench.worker``): the workload of the
throughput suite, ``warmup`` unprofiled steps, then ``repeats`` steps under ``torch.profiler``
(``dimbench.measure.step_breakdown``). The same step is recorded on fake tensors
(``dimbench.measure.op_recorder``) for each category's FLOPs and bytes, so achieved GFLOP/s and
GB/s and the share of the device's roofline (from its device profile, ``dimbench calibrate``)
come out per category.

Rows (long format, ``scope`` and ``category`` tell them apart):

- ``scope=model``: ``category=total`` (the step: profiled time, peak memory) and one row per
  operator category (``dimbench.measure.op_categories.CATEGORIES``; ``overhead`` is the time
  outside every operator);
- ``scope=block:<name>``, ``category=total``: each block of the model (every child of its
  ``nn.ModuleList``s, e.g. ``block:blocks.3``), forward only;
- ``scope=memory``: ``category=held`` (parameters and optimizer state before the step) and
  ``top1``..``top5``, the operators whose allocations are live at the peak (``op``).

Its suite options (``Config.suite_options``, set by the command): ``trace_dir`` (``--trace``:
a Chrome/Perfetto trace per configuration there) and ``device_profile`` (``--device-profile``).
"""

from __future__ import annotations

import re
from pathlib import Path

from dimbench.bench.registry import register_suite
from dimbench.bench.spec import (
    PARAMS_COLUMN,
    PREDICTED_PEAK_COLUMN,
    Config,
    Suite,
    SummaryColumn,
    fmt,
)
from dimbench.bench.suites.flops import COLUMNS as FLOPS_COLUMNS

TRACE_OPTION = "trace_dir"  # suite options (Config.suite_options): where traces go
PROFILE_OPTION = "device_profile"  # and the device profile file for the roofline
TOP_HOLDERS = 5

COLUMNS = {
    "scope": "profile rows: model (the whole step), block:<name> (one block), memory",
    "category": "profile rows: an operator category, total, or (memory rows) held / top1..top5",
    "op": "memory rows: the operator whose allocations are live at the peak (its category)",
    "time_ms": "profiled time per step: self time of the category's operators, or the block's",
    "share": "time_ms / the step's profiled time",
    "gflops": FLOPS_COLUMNS["gflops"],
    "gbytes": "GB moved: bytes read + written by the operators (views: none), counted on fake "
    "tensors",
    "ops": "operators that move data, counted on fake tensors",
    "gflops_s": "achieved GFLOP/s: gflops / time_ms",
    "gbytes_s": "achieved GB/s: gbytes / time_ms",
    "roofline_pct": "% of the device's roofline: max(FLOPs / peak matmul GFLOP/s, bytes / "
    "bandwidth) of its device profile, over time_ms",
    "mem_mb": "total row: peak memory of the step (held + allocated during it; CUDA: max "
    "allocated); memory rows: MB held before the step, or live at the peak from op",
    **PREDICTED_PEAK_COLUMN,
    **PARAMS_COLUMN,
}
KEYS = ("scope", "category")


def trace_path(cfg: Config, folder: str | Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", cfg.model)
    stem = f"{name}_{cfg.image_size}px_b{cfg.batch_size}_{cfg.dtype}_{cfg.mode}_{cfg.device}"
    return Path(folder) / f"{stem.replace(':', '')}.json"


def find_device_profile(cfg: Config):
    """The profile the command named, else this machine's cached one for the device, else None."""
    from dimbench.measure import device_profile as dp

    path = cfg.option(PROFILE_OPTION)
    return dp.load(path) if path else dp.cached(cfg.device)


def _rates(time_ms: float, flops: float, nbytes: float, device_profile, dtype: str) -> dict:
    out = {"gflops": flops / 1e9, "gbytes": nbytes / 1e9}
    seconds = time_ms / 1e3
    if seconds > 0:
        out["gflops_s"] = flops / 1e9 / seconds
        out["gbytes_s"] = nbytes / 1e9 / seconds
        if device_profile is not None and (flops or nbytes):
            roof = max(
                flops / (device_profile.matmul_gflops(dtype) * 1e9),
                nbytes / (device_profile.bandwidth_gbs * 1e9),
            )
            out["roofline_pct"] = 100 * roof / seconds
    return out


def measure(cfg: Config) -> dict:
    import torch

    from dimbench.bench.workload import build_workload, warm_up_runtime
    from dimbench.measure.op_categories import CATEGORIES
    from dimbench.measure.op_recorder import record_step
    from dimbench.measure.step_breakdown import break_down_step

    on_gpu = cfg.device.startswith("cuda")
    device_profile = find_device_profile(cfg)
    warm_up_runtime(cfg.device)
    work = build_workload(cfg)
    for _ in range(max(1, cfg.warmup)):
        work.step()
    params = sum(p.numel() * p.element_size() for p in work.model.parameters())
    params += sum(b.numel() * b.element_size() for b in work.model.buffers())
    held = params * (3 if cfg.mode == "train" else 1)  # + AdamW's two moments
    if on_gpu:
        torch.cuda.synchronize(cfg.device)
        held = torch.cuda.memory_allocated(cfg.device)
        torch.cuda.reset_peak_memory_stats(cfg.device)
    trace_dir = cfg.option(TRACE_OPTION)
    trace = trace_path(cfg, trace_dir) if trace_dir else None
    breakdown = break_down_step(
        work.step, work.model, cfg.device, steps=max(1, cfg.repeats), trace_path=trace
    )
    peak = torch.cuda.max_memory_allocated(cfg.device) if on_gpu else held + breakdown.peak_bytes
    stream = record_step(
        cfg.model, cfg.image_size, cfg.batch_size, cfg.dtype, cfg.mode, cfg.device,
        cfg.backend_kwargs(),
    )  # fmt: skip
    counted = stream.by_category()
    total_ms = breakdown.total_s * 1e3
    rows = [
        {
            "scope": "model",
            "category": "total",
            "time_ms": total_ms,
            "share": 1.0,
            "ops": sum(c["ops"] for c in counted.values()),
            "mem_mb": peak / 1e6,
            **_rates(total_ms, stream.flops, stream.bytes, device_profile, cfg.dtype),
        }
    ]
    for category in CATEGORIES:
        ms = breakdown.category_s.get(category, 0.0) * 1e3
        c = counted[category]
        rows.append(
            {
                "scope": "model",
                "category": category,
                "time_ms": ms,
                "share": ms / total_ms if total_ms else None,
                "ops": c["ops"],
                **_rates(ms, c["flops"], c["bytes"], device_profile, cfg.dtype),
            }
        )
    per_block = stream.by_block()
    for block in stream.blocks:
        ms = breakdown.block_s.get(block, 0.0) * 1e3
        c = per_block.get(block, {"flops": 0, "bytes": 0, "ops": 0})
        rows.append(
            {
                "scope": f"block:{block}",
                "category": "total",
                "time_ms": ms,
                "share": ms / total_ms if total_ms else None,
                "ops": c["ops"],
                **_rates(ms, c["flops"], c["bytes"], device_profile, cfg.dtype),
            }
        )
    rows.append({"scope": "memory", "category": "held", "mem_mb": held / 1e6})
    for i, holder in enumerate(breakdown.holders[:TOP_HOLDERS]):
        rows.append(
            {
                "scope": "memory",
                "category": f"top{i + 1}",
                "op": f"{holder.op} ({holder.category})",
                "mem_mb": holder.bytes / 1e6,
            }
        )
    raw = {
        "wall_ms": breakdown.wall_s * 1e3,
        "steps": breakdown.steps,
        "top_ops_ms": {c: [(op, s * 1e3) for op, s in ops] for c, ops in breakdown.top_ops.items()},
        "trace": str(trace) if trace else None,
        "device_profile": device_profile.label if device_profile is not None else None,
        "predicted_peak_mb": stream.peak_bytes / 1e6,
    }
    return {"rows": rows, "raw": raw}


def row_line(row: dict) -> str:
    return (
        f"profiled step {fmt(row.get('time_ms'), '.1f')} ms, "
        f"{fmt(row.get('gflops_s'), '.3g')} GFLOP/s, peak {fmt(row.get('mem_mb'), '.0f')} MB"
    )


SUITE = register_suite(
    Suite(
        name="profile",
        measure=measure,
        columns=COLUMNS,
        summary=(
            SummaryColumn("time_ms", "ms", ".1f"),
            SummaryColumn("share", "share", ".1%"),
            SummaryColumn("gflops_s", "GFLOP/s", ".3g"),
            SummaryColumn("gbytes_s", "GB/s", ".3g"),
            SummaryColumn("roofline_pct", "% roofline", ".0f"),
        ),
        row_line=row_line,
        row_keys=KEYS,
        figure="dimbench.plots.profile:plot_profile",
    )
)
