"""The cost model: a step's latency and peak memory predicted from its operators (recorded on
fake tensors, ``op_recorder``) priced by a device profile (``device_profile``). Nothing runs.

Each operator costs the roofline, max(FLOPs / compute rate, bytes / bandwidth), plus the
device's per-operator dispatch cost (added on a CPU; overlapped, max, where launches are
asynchronous). On a measured profile the rates are this device's, for the kind of operator
at its size:

- matmul: a fitted efficiency model t = c + b*2mnk / (R * e(m) e(n) e(k)), e(d) = d / (d + h),
  through the measured (m, n, k) points, corrected towards the nearest measured shapes (a
  Gaussian kernel in log-shape space), so a measured shape is priced at its measured time and
  a new token count (resolution) between or beyond them by the fit;
- attention (SDPA) over its FLOPs (4 L^2 D per head), the scan over its FLOPs (9 B L D N, the
  same with fixed or grouped B and C; 36 B L D N for a complex A), convs over theirs, per
  operator and dtype; norms, copies, elementwise and other operators over the bytes they move:
  the measured times interpolated in log-log, beyond the largest measured size at that size's
  rate;
- an operator the calibration never saw: its category's curve, else the generic elementwise
  or copy curve of the device by bytes, else the roofline of the ceilings.

A datasheet profile has ceilings only: every operator costs its roofline time plus dispatch.
Peak memory: parameters (+ AdamW state in a train step) plus the peak of live operator outputs.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dimbench.measure.device_profile import DeviceProfile
from dimbench.measure.op_categories import CATEGORIES
from dimbench.measure.op_recorder import OpRecord, OpStream

KERNEL_SIGMA = 0.25  # width of the shape-correction kernel, in log units (a factor of ~1.3)
PRIOR_WEIGHT = 0.01  # pulls the correction to the fit far from every measured shape
BY_FLOPS = ("attention", "scan", "conv")  # priced over FLOPs; the rest over bytes


class Curve:
    """Milliseconds against a size (bytes or FLOPs): piecewise linear in log-log through the
    measured points; above the largest, the last segment's slope (between 0.5 and 1: the rate
    may still grow, never faster than the square root of the size; the caller bounds it by the
    roofline); below the smallest, a floor of ``floor_ms`` plus the smallest point's rate."""

    def __init__(self, points: Iterable[tuple[float, float]], floor_ms: float = 0.0) -> None:
        merged: dict[float, list[float]] = defaultdict(list)
        for x, ms in points:
            if x > 0 and ms > 0:
                merged[float(x)].append(math.log(ms))
        self.xs = sorted(merged)
        self.log_ms = [sum(merged[x]) / len(merged[x]) for x in self.xs]
        self.floor_ms = floor_ms

    def __bool__(self) -> bool:
        return bool(self.xs)

    def ms(self, x: float) -> float:
        xs, ys = self.xs, self.log_ms
        if x <= 0:
            return self.floor_ms
        if x >= xs[-1]:
            slope = 1.0
            if len(xs) > 1:
                slope = (ys[-1] - ys[-2]) / (math.log(xs[-1]) - math.log(xs[-2]))
                slope = min(1.0, max(0.5, slope))
            return math.exp(ys[-1]) * (x / xs[-1]) ** slope
        if x <= xs[0]:
            first = math.exp(ys[0])
            return max(self.floor_ms, self.floor_ms + (first - self.floor_ms) * x / xs[0])
        i = bisect.bisect_right(xs, x)
        x0, x1 = math.log(xs[i - 1]), math.log(xs[i])
        w = (math.log(x) - x0) / (x1 - x0)
        return math.exp(ys[i - 1] + w * (ys[i] - ys[i - 1]))


def _eff(d: float, h: float) -> float:
    return d / (d + h)


@dataclass
class MatmulModel:
    """Fitted GEMM efficiency for one dtype plus corrections from the measured shapes."""

    rate_gflops: float  # R: the asymptotic rate
    halves: tuple[float, float, float]  # h for m, n, k
    overhead_ms: float
    shapes: list[tuple[float, float, float]] = field(default_factory=list)  # log (m, n, k)
    residuals: list[float] = field(default_factory=list)  # log(measured / fit) there

    def fit_ms(self, b: int, m: int, n: int, k: int) -> float:
        hm, hn, hk = self.halves
        rate = self.rate_gflops * _eff(m, hm) * _eff(n, hn) * _eff(k, hk)
        return self.overhead_ms + b * 2 * m * n * k / (rate * 1e6)

    def ms(self, b: int, m: int, n: int, k: int) -> float:
        base = self.fit_ms(b, m, n, k)
        if not self.shapes:
            return base
        q = (math.log(m), math.log(n), math.log(k))
        num, den = 0.0, PRIOR_WEIGHT
        for shape, r in zip(self.shapes, self.residuals, strict=True):
            d2 = sum((a - c) ** 2 for a, c in zip(q, shape, strict=True))
            w = math.exp(-d2 / (2 * KERNEL_SIGMA**2))
            num, den = num + w * r, den + w
        return base * math.exp(num / den)

    def to_dict(self) -> dict:
        return {
            "rate_gflops": self.rate_gflops,
            "half_m": self.halves[0],
            "half_n": self.halves[1],
            "half_k": self.halves[2],
            "overhead_ms": self.overhead_ms,
            "points": len(self.shapes),
        }


def fit_matmul(points: list[dict]) -> MatmulModel | None:
    """Least-squares fit (in log time) of the GEMM efficiency model to measured points
    ``{"dims": [b, m, n, k], "ms"}``; None with fewer than five."""
    import numpy as np
    from scipy.optimize import least_squares

    rows = [
        (p["dims"], p["ms"]) for p in points if p.get("dims") and len(p["dims"]) == 4 and p["ms"]
    ]
    if len(rows) < 5:
        return None
    dims = np.array([d for d, _ in rows], dtype=float)
    ms = np.array([t for _, t in rows], dtype=float)
    b, m, n, k = dims.T
    work = b * 2 * m * n * k / 1e6  # GFLOP -> ms at 1 GFLOP/s

    def model(theta):
        log_r, log_hm, log_hn, log_hk, log_c = theta
        eff = (m / (m + np.exp(log_hm))) * (n / (n + np.exp(log_hn))) * (k / (k + np.exp(log_hk)))
        return np.exp(log_c) + work / (np.exp(log_r) * eff)

    rates = work / ms
    start = [math.log(rates.max() * 1.2), math.log(32), math.log(32), math.log(32), math.log(1e-3)]
    fit = least_squares(
        lambda th: np.log(model(th)) - np.log(ms),
        start,
        bounds=([-5, -5, -5, -5, math.log(1e-6)], [20, 12, 12, 12, math.log(10.0)]),
    )
    log_r, log_hm, log_hn, log_hk, log_c = fit.x
    out = MatmulModel(
        rate_gflops=float(math.exp(log_r)),
        halves=(float(math.exp(log_hm)), float(math.exp(log_hn)), float(math.exp(log_hk))),
        overhead_ms=float(math.exp(log_c)),
    )
    for (bb, mm, nn, kk), t in rows:
        out.shapes.append((math.log(mm), math.log(nn), math.log(kk)))
        out.residuals.append(math.log(t / out.fit_ms(bb, mm, nn, kk)))
    return out


def conv_kind(dims) -> str:
    """ "dw" (depthwise) or "dense", with the kernel size: the convs calibrate separately."""
    if not dims:
        return "conv"
    _, cin, _, groups, kernel, _ = dims
    return f"{'dw' if groups == cin and groups > 1 else 'dense'}-k{kernel}"


def point_key(category: str, op: str, dtype: str, dims) -> tuple:
    """What a measured point is looked up by (an operator of the same kind and dtype)."""
    if category == "conv":
        return (category, op, dtype, conv_kind(dims))
    return (category, op, dtype)


def point_size(category: str, flops: float, nbytes: float) -> float:
    return flops if category in BY_FLOPS and flops > 0 else nbytes


class CostModel:
    """Prices recorded operators with one device profile."""

    def __init__(self, device_profile: DeviceProfile) -> None:
        self.device_profile = device_profile
        dispatch_ms = device_profile.dispatch_us / 1e3
        groups: dict[tuple, list] = defaultdict(list)
        by_category: dict[tuple, list] = defaultdict(list)
        matmuls: dict[str, list] = defaultdict(list)
        for p in device_profile.points:
            cat = p["category"]
            if cat == "matmul":
                matmuls[p["dtype"]].append(p)
                continue
            size = point_size(cat, p.get("flops", 0), p.get("bytes", 0))
            groups[point_key(cat, p["op"], p["dtype"], p.get("dims"))].append((size, p["ms"]))
            by_category[(cat, p["dtype"])].append((size, p["ms"]))
        self.curves = {k: Curve(v, dispatch_ms) for k, v in groups.items()}
        self.category_curves = {k: Curve(v, dispatch_ms) for k, v in by_category.items()}
        self.matmul = {d: fit_matmul(v) for d, v in matmuls.items()}
        self.matmul_points = matmuls
        curves = device_profile.curves or {}
        self.copy_curve = Curve(curves.get("copy", []), dispatch_ms)
        self.elementwise_curves = {
            d: Curve(v, dispatch_ms) for d, v in (curves.get("elementwise") or {}).items()
        }

    def bandwidth_gbs(self, nbytes: float) -> float:
        """The copy bandwidth at this size (the ceiling where no curve was measured)."""
        if self.copy_curve and nbytes > 0:
            return nbytes / (self.copy_curve.ms(nbytes) * 1e6)
        return self.device_profile.bandwidth_gbs

    def roofline_ms(self, op: OpRecord) -> float:
        """The ceilings' time for an operator, no dispatch cost: max(compute, memory)."""
        p = self.device_profile
        if op.category in ("matmul", "attention", "conv"):
            rate = p.matmul_gflops(op.dtype)
        else:
            rate = p.vector_gflops(op.dtype)
        compute = op.flops / (rate * 1e6) if op.flops else 0.0
        memory = op.bytes / (p.bandwidth_gbs * 1e6) if op.bytes else 0.0
        return max(compute, memory)

    def _with_dispatch(self, ms: float) -> float:
        d = self.device_profile.dispatch_us / 1e3
        return max(d, ms) if self.device_profile.async_dispatch else d + ms

    def _with_framework(self, ms: float) -> float:
        """Add the host time a model spends per operator beyond the operator's own call
        (module calls, Python between operators): a fitted ceiling, 0 where not measured."""
        f = self.device_profile.ceilings.get("framework_us", 0.0) / 1e3
        if not f:
            return ms
        if self.device_profile.async_dispatch:
            return max(ms, f + self.device_profile.dispatch_us / 1e3)
        return ms + f

    def op_ms(self, op: OpRecord, framework: bool = True) -> float:
        """Predicted milliseconds of one operator (``framework``: with the model's per-operator
        host time)."""
        if op.view:
            return self.device_profile.view_us / 1e3
        ms = self._measured_ms(op) if self.device_profile.source == "measured" else None
        if ms is None:
            ms = self._with_dispatch(self.roofline_ms(op))
        return self._with_framework(ms) if framework else ms

    def _measured_ms(self, op: OpRecord) -> float | None:
        cat, dims = op.category, op.dims
        if cat == "matmul" and dims:
            model = self.matmul.get(op.dtype)
            if model is not None:
                return model.ms(*dims)
            return None
        size = point_size(cat, op.flops, op.bytes)
        curve = self.curves.get(point_key(cat, op.name, op.dtype, dims))
        if curve is None and cat in BY_FLOPS:
            curve = self.category_curves.get((cat, op.dtype))
        if curve is None and cat not in BY_FLOPS:
            curve = self.copy_curve if cat == "copy" else self.elementwise_curves.get(op.dtype)
            curve = curve or self.elementwise_curves.get("fp32")
        if not curve:
            return None
        return max(curve.ms(size), self.roofline_ms(op))


@dataclass
class Prediction:
    """A step's predicted latency and memory, with the per-category split."""

    latency_ms: float
    peak_bytes: int
    flops: int
    bytes: int
    ops: int
    category_ms: dict[str, float]
    category_flops: dict[str, int]
    category_bytes: dict[str, int]
    roofline_ms: float  # the ceilings' lower bound, no dispatch

    def to_dict(self) -> dict:
        return {
            "latency_ms": self.latency_ms,
            "peak_bytes": self.peak_bytes,
            "flops": self.flops,
            "bytes": self.bytes,
            "ops": self.ops,
            "roofline_ms": self.roofline_ms,
            "category_ms": self.category_ms,
            "category_flops": self.category_flops,
            "category_bytes": self.category_bytes,
        }


def predict_stream(stream: OpStream, cost: CostModel) -> Prediction:
    cat_ms = dict.fromkeys(CATEGORIES, 0.0)
    cat_flops = dict.fromkeys(CATEGORIES, 0)
    cat_bytes = dict.fromkeys(CATEGORIES, 0)
    roof = 0.0
    for op in stream.ops:
        cat_ms[op.category] += cost.op_ms(op)
        cat_flops[op.category] += op.flops
        cat_bytes[op.category] += op.bytes
        roof += 0.0 if op.view else cost.roofline_ms(op)
    return Prediction(
        latency_ms=sum(cat_ms.values()),
        peak_bytes=stream.peak_bytes,
        flops=stream.flops,
        bytes=stream.bytes,
        ops=sum(1 for op in stream.ops if not op.view),
        category_ms=cat_ms,
        category_flops=cat_flops,
        category_bytes=cat_bytes,
        roofline_ms=roof,
    )


def crossover_px(
    per_image_ms: Callable[[int, str], float],
    model: str,
    baseline: str,
    lo: int,
    hi: int,
    step: int = 16,
) -> float | None:
    """The resolution (a multiple of ``step``) from which ``model`` is faster per image than
    ``baseline``, found by bisection between ``lo`` and ``hi``; None when the ratio does not
    cross 1 there (or starts above it)."""

    def ahead(res: int) -> bool:
        return per_image_ms(res, model) < per_image_ms(res, baseline)

    if ahead(lo) or not ahead(hi):
        return None
    a, b = lo // step, hi // step
    while b - a > 1:
        mid = (a + b) // 2
        if ahead(mid * step):
            b = mid
        else:
            a = mid
    return float(b * step)
