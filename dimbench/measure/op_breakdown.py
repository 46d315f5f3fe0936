"""Where a forward pass spends its time, by kind of operator (torch.profiler, CPU time).

``op_breakdown(fn)`` runs ``fn()`` once under ``torch.profiler`` and splits the recorded CPU time
into four categories: the selective-scan custom op, convolutions, linear layers / matmuls, and
everything else. Each operator's *self* time goes to the category of its outermost categorised
ancestor, so everything the scan does inside (the ref backend's hundreds of small ops, say)
counts as scan, and a matmul inside ``aten::linear`` counts once.

``group_modules`` marks modules (e.g. a model's blocks) with a profiler range each time they
run; the breakdown is then also given for the time spent inside those modules, which answers
"what share of the *block* time is the scan".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

CATEGORIES = ("scan", "conv", "linear", "other")
GROUP_RANGE = "op_breakdown::group"

_SCAN_PREFIXES = ("dimbench::selective_scan",)
_CONV_PREFIXES = (
    "aten::conv",
    "aten::_conv",
    "aten::convolution",
    "aten::mkldnn_convolution",
    "aten::thnn_conv",
    "aten::_slow_conv",
    "aten::slow_conv",
    "aten::cudnn_convolution",
    "dimbench::causal_conv1d",  # the conv kernels' custom ops (cpu, triton) and their backward
)
_LINEAR_NAMES = frozenset(
    {
        "aten::linear",
        "aten::matmul",
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::_addmm_activation",
        "aten::mkldnn_linear",
        "aten::_mkl_linear",
    }
)


def classify(op_name: str) -> str | None:
    """The category of one profiler event name, ``None`` for uncategorised ops."""
    if op_name.startswith(_SCAN_PREFIXES):
        return "scan"
    if op_name.startswith(_CONV_PREFIXES):
        return "conv"
    if op_name in _LINEAR_NAMES:
        return "linear"
    return None


@dataclass
class OpBreakdown:
    """Seconds of CPU time per category, overall and inside the grouped modules."""

    wall_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    group_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def group_total_s(self) -> float:
        return sum(self.group_seconds.values())

    def share(self, category: str, within_group: bool = False) -> float:
        """Fraction of the total (or of the grouped modules' total) spent in ``category``."""
        part = self.group_seconds if within_group else self.seconds
        total = sum(part.values())
        return part.get(category, 0.0) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"wall_s": self.wall_s, "total_s": self.total_s}
        for cat in CATEGORIES:
            row[f"{cat}_s"] = self.seconds.get(cat, 0.0)
            row[f"{cat}_share"] = self.share(cat)
        if self.group_seconds:
            row["group_total_s"] = self.group_total_s
            for cat in CATEGORIES:
                row[f"group_{cat}_share"] = self.share(cat, within_group=True)
        return row

    def format(self) -> str:
        lines = [f"wall {self.wall_s:.3f} s, profiled CPU time {self.total_s:.3f} s"]
        for cat in CATEGORIES:
            line = f"  {cat:<7}{self.seconds.get(cat, 0.0):9.3f} s  {self.share(cat):6.1%}"
            if self.group_seconds:
                line += f"   (of block time {self.share(cat, within_group=True):6.1%})"
            lines.append(line)
        if self.group_seconds:
            lines.append(f"  inside the grouped modules: {self.group_total_s:.3f} s")
        return "\n".join(lines)


def _mark_modules(modules: Iterable[nn.Module]) -> list[Any]:
    """Hooks that wrap each module's forward in a profiler range; returns the hook handles."""
    handles = []

    def enter(module, args):
        ctx = torch.profiler.record_function(GROUP_RANGE)
        ctx.__enter__()
        module.__dict__.setdefault("_op_breakdown_ranges", []).append(ctx)

    def leave(module, args, output):
        module.__dict__["_op_breakdown_ranges"].pop().__exit__(None, None, None)

    for module in modules:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    return handles


def op_breakdown(fn: Callable[[], Any], group_modules: Iterable[nn.Module] = ()) -> OpBreakdown:
    """Run ``fn()`` once under the profiler and split its CPU time by operator category."""
    handles = _mark_modules(group_modules)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
    finally:
        for h in handles:
            h.remove()

    seconds = dict.fromkeys(CATEGORIES, 0.0)
    group_seconds = dict.fromkeys(CATEGORIES, 0.0)
    any_group = False
    for event in prof.events():
        category, in_group = None, False
        node = event
        while node is not None:
            category = classify(node.name) or category  # the outermost categorised wins
            in_group = in_group or node.name == GROUP_RANGE
            node = node.cpu_parent
        self_s = event.self_cpu_time_total / 1e6
        seconds[category or "other"] += self_s
        if in_group:
            any_group = True
            group_seconds[category or "other"] += self_s
    return OpBreakdown(
        wall_s=wall, seconds=seconds, group_seconds=group_seconds if any_group else {}
    )
