"""Where one step's time and memory go, from ``torch.profiler``: time per operator category
(``op_categories.classify``), per block, the step's peak memory and what holds it.

Time is each profiler event's *self* time (CPU time on the CPU; on CUDA the device time of the
kernels an event launched, from the profiler's device events), given to the category of the
operators it ran inside. Time outside every operator is ``overhead`` (Python and module calls;
on CUDA the device's idle time within the step). Each block of the model (every child of an
``nn.ModuleList``) runs inside a profiler range, ``dimbench.block:<name>``.

Memory: the allocations the profiler records (``profile_memory``), replayed in time order; at
their peak, the live allocations are grouped by the outermost operator that made them.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dimbench.measure.op_categories import (
    ALLOCATORS,
    CATEGORIES,
    classify,
    is_custom,
    is_optimizer_range,
    split_name,
)
from dimbench.measure.op_recorder import hook_blocks

STEP_RANGE = "dimbench.step"
BLOCK_RANGE = "dimbench.block:"
TOP_HOLDERS = 5


@dataclass
class Holder:
    """Memory live at the peak, made by one operator."""

    op: str
    category: str
    bytes: int


@dataclass
class StepBreakdown:
    """One profiled step (averaged over ``steps``): seconds per category and per block."""

    device: str
    steps: int
    wall_s: float  # per step, the profiler's own overhead included
    category_s: dict[str, float]
    block_s: dict[str, float]
    peak_bytes: int  # allocated during the step at its peak, on top of what it started with
    holders: list[Holder] = field(default_factory=list)
    top_ops: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # per category
    trace: str | None = None

    @property
    def total_s(self) -> float:
        return sum(self.category_s.values())


@functools.cache
def is_operator(name: str) -> bool:
    """A dispatcher operator (aten, prim or a registered custom op), not a profiler range such
    as ``autograd::engine::evaluate_function: MmBackward0`` or ``cudaLaunchKernel``."""
    ns, sep, op = name.partition("::")
    if not sep or not op or " " in op or ":" in op:
        return False
    if ns in ("aten", "prim"):
        return True
    return is_custom(name) and hasattr(getattr(torch.ops, ns, None), op)


def _chain(event) -> list:
    out = []
    node = event
    while node is not None:
        out.append(node)
        node = node.cpu_parent
    return out[::-1]  # outermost first


def _block_of(chain) -> str | None:
    for e in reversed(chain):
        if e.name.startswith(BLOCK_RANGE):
            return e.name[len(BLOCK_RANGE) :]
    return None


def break_down_step(
    step: Callable[[], object],
    model: nn.Module,
    device: str = "cpu",
    steps: int = 1,
    trace_path: str | Path | None = None,
) -> StepBreakdown:
    """Run ``step()`` ``steps`` times under the profiler (after the caller's warm-up)."""
    on_cuda = str(device).startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    ranges: list = []

    def enter(name: str) -> None:
        rf = torch.profiler.record_function(BLOCK_RANGE + name)
        rf.__enter__()
        ranges.append(rf)

    def leave(name: str) -> None:
        ranges.pop().__exit__(None, None, None)

    handles = hook_blocks(model, enter, leave)
    try:
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                with torch.profiler.record_function(STEP_RANGE):
                    step()
                if on_cuda:
                    torch.cuda.synchronize(device)
            wall = (time.perf_counter() - t0) / steps
    finally:
        for h in handles:
            h.remove()
    if trace_path is not None:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace_path))
    return _analyse(prof, device, steps, wall, str(trace_path) if trace_path else None)


def _analyse(prof, device: str, steps: int, wall: float, trace: str | None) -> StepBreakdown:
    on_cuda = str(device).startswith("cuda")
    category_us: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    block_us: dict[str, float] = defaultdict(float)
    op_us: dict[tuple[str, str], float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue  # device events: counted through the CPU events that launched them
        chain = _chain(event)
        if not any(e.name == STEP_RANGE for e in chain):
            continue
        self_us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        names = [e.name for e in chain if is_operator(e.name) or is_optimizer_range(e.name)]
        if any(is_operator(n) for n in names):
            category = classify(names)
            outer = next(n for n in names if is_operator(n))
            op_us[(category, outer)] += self_us
        elif any(is_optimizer_range(n) for n in names):
            category = "optimizer"
        else:
            category = "overhead"
        category_us[category] += self_us
        block = _block_of(chain)
        if block is not None:
            block_us[block] += self_us
    if on_cuda:  # the device's idle time within the step
        busy = sum(category_us.values())
        category_us["overhead"] = max(0.0, wall * 1e6 * steps - busy)
    peak, holders = _memory(prof, device)
    top_ops: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (category, op), us in sorted(op_us.items(), key=lambda kv: -kv[1]):
        if len(top_ops[category]) < 5:
            top_ops[category].append((op, us / 1e6 / steps))
    return StepBreakdown(
        device=str(device),
        steps=steps,
        wall_s=wall,
        category_s={c: us / 1e6 / steps for c, us in category_us.items()},
        block_s={b: us / 1e6 / steps for b, us in block_us.items()},
        peak_bytes=peak,
        holders=holders,
        top_ops=dict(top_ops),
        trace=trace,
    )


def _memory(prof, device: str) -> tuple[int, list[Holder]]:
    """Peak of the allocations made during the profiled steps (relative to their start) and
    the operators whose allocations are live at that peak."""
    from torch._C._profiler import _EventType

    want = torch.device(device).type
    allocations = []

    def walk(event, chain):
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            if torch.device(fields.device).type == want:
                allocations.append((event.start_time_ns, fields.ptr, fields.alloc_size, chain))
            return
        names = chain + [event.name] if is_operator(event.name) else chain
        for child in event.children:
            walk(child, names)

    try:
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, RuntimeError):
        return 0, []
    for root in roots:
        walk(root, [])
    allocations.sort(key=lambda a: a[0])
    live: dict[int, tuple[int, list[str]]] = {}
    current = peak = 0
    at_peak: dict[int, tuple[int, list[str]]] = {}
    for _, ptr, size, chain in allocations:
        current += size
        if size > 0:
            live[ptr] = (size, chain)
        else:
            live.pop(ptr, None)
        if current > peak:
            peak = current
            at_peak = dict(live)
    grouped: dict[tuple[str, str], int] = defaultdict(int)
    for size, chain in at_peak.values():
        while chain and split_name(chain[-1])[1] in ALLOCATORS:
            chain = chain[:-1]  # what the memory is for, not the allocator that got it
        op = chain[0] if chain else "(outside any operator)"
        grouped[(op, classify(chain) if chain else "other")] += size
    holders = [
        Holder(op, category, size)
        for (op, category), size in sorted(grouped.items(), key=lambda kv: -kv[1])
    ]
    return peak, holders[:TOP_HOLDERS]
