"""``dimbench calibrate``: measure this device's ceilings and the cost of the operators the
default models run, once, into a device profile (``device_profile``).

1. Ceilings: a square GEMM per dtype (the best matmul rate, with the models' own shapes), copy
   bandwidth over sizes (``dst.copy_(src)``, 16 KB to 256 MB: the cache levels show), the
   elementwise throughput of a fresh ``a + b`` over the same sizes per dtype, the cost of one
   tiny operator called from Python (dispatch) and of a view.
2. The models' operators, timed where they run: each default model's forward at each default
   resolution and dtype runs for real (after one warm-up forward) under a recorder that times
   every operator (``OpTimer``: the op recorder's categories, FLOPs, bytes and shapes, plus
   the time of the operator's own call; CUDA events on a GPU). An operator's time is the
   median over its calls in the step (the blocks repeat it), so the cache and allocator state
   is the model's own: replayed in isolation, an operator finds its weights in cache and runs
   faster than in a model.
3. Framework time: at each model's smallest resolution its plain forward is timed too; what it
   takes beyond the sum of its operators, per operator, is the host time a model adds to each
   operator (module calls, Python between operators): ``framework_us``, the one fitted
   ceiling (median over the models).

The points keep each operator's category, dtype, shape (``dims``), FLOPs and bytes: the cost
model interpolates between them (``cost_model``).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from dimbench.dtypes import TORCH_DTYPES
from dimbench.measure.clocks import PERF_COUNTER, PROCESS_TIME, CudaClock, CudaSpan, device_clock
from dimbench.measure.device_profile import DeviceProfile
from dimbench.measure.op_recorder import OpRecord, OpRecorder, OpStream, record_step

CLOCKS = {"wall": PERF_COUNTER, "process": PROCESS_TIME}  # --clock -> clocks' name
SWEEP_BYTES = [2**e for e in range(14, 29, 2)]  # 16 KB .. 256 MB per tensor
SLOW_CALL_S = 0.25  # a call this long is timed once more and not repeated
# what calibrate reports after the models' operators, one stage each
CEILING_STAGES = ("ceilings: copy bandwidth", "ceilings: elementwise", "ceilings: matmul",
                  "ceilings: dispatch")  # fmt: skip


@dataclass
class Options:
    models: list[str]
    resolutions: list[int]
    dtypes: list[str]
    device: str = "cpu"
    mode: str = "forward"
    batch_size: int = 1
    clock: str = "wall"
    budget_s: float = 0.03  # timed seconds per ceiling measurement (at least 3 calls)
    sweep_bytes: tuple[int, ...] = tuple(SWEEP_BYTES)
    gemm_size: int | None = None  # square GEMM side (default: 2048 CPU, 8192 GPU)


class Timer:
    """Times a call on ``device`` with the chosen clock (CUDA: events, no synchronisation first)."""

    def __init__(self, device: str, clock: str = "wall") -> None:
        self.clock = device_clock(device, cpu=CLOCKS[clock])

    def once(self, fn: Callable[[], object]) -> float:
        with self.clock.span() as span:
            fn()
        return span.seconds

    def median_ms(self, fn: Callable[[], object], budget_s: float = 0.03, max_calls: int = 15):
        """First call untimed; a slow operator is timed once more; else at least three
        calls and until ``budget_s`` is spent. Returns the median in ms."""
        first = self.once(fn)
        if first > SLOW_CALL_S:
            return self.once(fn) * 1e3
        samples: list[float] = []
        while len(samples) < 3 or (sum(samples) < budget_s and len(samples) < max_calls):
            samples.append(self.once(fn))
        return statistics.median(samples) * 1e3


# ---- operators timed inside the models


class OpTimer(OpRecorder):
    """An op recorder on real tensors that also times each operator's own call."""

    def __init__(self, device: str, clock: str = "wall") -> None:
        super().__init__()
        self.clock = device_clock(device, cpu=CLOCKS[clock])
        self.cuda = isinstance(self.clock, CudaClock)
        self._spans: list[tuple[int, CudaSpan]] = []

    def run(self, func, args, kwargs):
        if self.cuda:  # read in resolve(), after one synchronisation
            span = self.clock.span()
            with span:
                out = func(*args, **kwargs)
            self._spans.append((len(self.ops), span))
            return out, None
        # the clock read directly, no span object: the recorder's own cost per operator stays
        # small (process_time is a system call, 1.6 us here: the timing cost taken off covers it)
        now = self.clock.now
        t0 = now()
        out = func(*args, **kwargs)
        return out, (now() - t0) * 1e3

    def resolve(self) -> None:
        """Fill in the CUDA operators' times once their events have completed."""
        if self._spans:
            torch.cuda.synchronize()
            for i, span in self._spans:
                self.ops[i].ms = span.ms
            self._spans.clear()


def timed_step(model: str, res: int, dtype: str, opts, backends: dict) -> OpStream:
    """One forward of ``model`` for real, every operator timed (after a warm-up forward)."""
    record_step(model, res, opts.batch_size, dtype, opts.mode, opts.device, backends, real=True)
    timer = OpTimer(opts.device, opts.clock)
    stream = record_step(
        model, res, opts.batch_size, dtype, opts.mode, opts.device, backends,
        recorder=timer, real=True,
    )  # fmt: skip
    timer.resolve()
    return stream


def op_points(streams: Iterable[OpStream], overhead_ms: float = 0.0) -> list[dict]:
    """One point per distinct operator (name, dtype, shape, work): the median of its calls,
    less the timing recorder's own cost per call (``overhead_ms``)."""
    calls: dict[tuple, list[float]] = defaultdict(list)
    meta: dict[tuple, OpRecord] = {}
    for stream in streams:
        for op in stream.ops:
            if op.view or op.ms is None:
                continue
            key = (op.name, op.dtype, op.category, op.dims, op.flops, op.bytes)
            calls[key].append(op.ms)
            meta.setdefault(key, op)
    points = []
    for key, times in calls.items():
        op = meta[key]
        points.append(
            {
                "op": op.name,
                "category": op.category,
                "dtype": op.dtype,
                "dims": list(op.dims) if op.dims else None,
                "flops": op.flops,
                "bytes": op.bytes,
                "ms": max(statistics.median(times) - overhead_ms, 1e-4),
                "calls": len(times),
            }
        )
    return points


# ---- ceilings


def sweep_copy(timer: Timer, device: str, sizes: Iterable[int], budget_s: float) -> list:
    """[bytes moved (read + write), ms] of ``dst.copy_(src)`` per size."""
    out = []
    for nbytes in sizes:
        n = nbytes // 4
        src = torch.empty(n, device=device).uniform_()
        dst = torch.empty_like(src)
        out.append([2 * nbytes, timer.median_ms(lambda s=src, d=dst: d.copy_(s), budget_s)])
    return out


def sweep_elementwise(
    timer: Timer, device: str, dtype: torch.dtype, sizes: Iterable[int], budget_s: float
) -> list:
    """[bytes moved, ms] of ``a + b`` into a fresh output per size (allocation included, as in
    a model)."""
    out = []
    item = torch.empty((), dtype=dtype).element_size()
    for nbytes in sizes:
        n = nbytes // item
        a = torch.empty(n, device=device, dtype=dtype).uniform_()
        b = torch.empty_like(a).uniform_()
        out.append([3 * nbytes, timer.median_ms(lambda a=a, b=b: torch.add(a, b), budget_s)])
    return out


def gemm_gflops(timer: Timer, device: str, dtype: torch.dtype, n: int) -> float:
    a = torch.empty(n, n, device=device, dtype=dtype).uniform_()
    b = torch.empty(n, n, device=device, dtype=dtype).uniform_()
    ms = timer.median_ms(lambda: torch.mm(a, b), 0.2, max_calls=5)
    return 2 * n**3 / (ms * 1e6)


def dispatch_us(timer: Timer, device: str, calls: int = 2000) -> tuple[float, float]:
    """(a tiny operator, a view) called from Python, microseconds each."""
    a = torch.ones(1, device=device)
    b = torch.ones(1, device=device)
    m = torch.ones(4, 4, device=device)

    def ops():
        for _ in range(calls):
            torch.add(a, b)

    def views():
        for _ in range(calls):
            m.t()

    return (
        timer.median_ms(ops, 0.05, max_calls=5) * 1e3 / calls,
        timer.median_ms(views, 0.02, max_calls=5) * 1e3 / calls,
    )


# ---- the whole calibration


def calibrate(opts: Options, progress: Callable[[str, int, int], None] | None = None):
    """Measure the device profile of ``opts.device`` (see the module docstring)."""
    from dimbench.measure.metadata import device_name, git_sha, load_average, machine_slug
    from dimbench.ops.backends import resolve
    from dimbench.registry import KERNELS, get_model
    from dimbench.results import utc_timestamp

    report = progress or (lambda what, done, total: None)
    start = time.perf_counter()
    load_start = load_average()
    device = opts.device
    on_gpu = device.startswith("cuda")
    timer = Timer(device, opts.clock)
    backends_used: dict[str, str] = {}
    forwards: dict[str, float] = {}

    streams = []
    smallest = min(opts.resolutions)
    todo = [(m, r, d) for m in opts.models for d in opts.dtypes for r in opts.resolutions]
    stages = len(todo) + len(CEILING_STAGES)

    def operators() -> str:
        return f"{sum(len(st.ops) for st in streams):,} operators timed"

    with torch.inference_mode():
        for i, (model, res, dtype) in enumerate(todo):
            report(f"timing {model} @ {res}px {dtype} ({operators()})", i, stages)
            backends = {}
            for kernel in get_model(model).kernels:
                backends[KERNELS[kernel]] = resolve(kernel, "auto", device, dtype)
                backends_used[kernel] = backends[KERNELS[kernel]]
            streams.append(timed_step(model, res, dtype, opts, backends))
            if res == smallest and dtype == opts.dtypes[0]:
                forwards[model] = model_forward_ms(model, res, dtype, opts, backends, timer)
    with torch.inference_mode():
        done = len(todo)
        report(f"{CEILING_STAGES[0]} ({operators()})", done, stages)
        sizes = opts.sweep_bytes
        copy = sweep_copy(timer, device, sizes, opts.budget_s)
        report(CEILING_STAGES[1], done + 1, stages)
        elementwise = {
            d: sweep_elementwise(timer, device, TORCH_DTYPES[d], sizes, opts.budget_s)
            for d in opts.dtypes
        }
        report(CEILING_STAGES[2], done + 2, stages)
        gemm = opts.gemm_size or (8192 if on_gpu else 2048)
        matmul = {d: gemm_gflops(timer, device, TORCH_DTYPES[d], gemm) for d in opts.dtypes}
        report(CEILING_STAGES[3], done + 3, stages)
        dispatch, view = dispatch_us(timer, device)
    report(f"fitting the cost model to {operators()}", stages, stages)
    # The recorder's Python between operators leaves each one's call colder (caches, branch
    # history) than in a model: what the smallest operators take beyond a tight loop's tiny op
    # is that cost, taken off every operator.
    tiny = [op.ms for st in streams for op in st.ops if not op.view and op.ms and op.bytes < 4096]
    timing_us = max(0.0, statistics.median(tiny) * 1e3 - dispatch) if tiny else 0.0
    points = op_points(streams, timing_us / 1e3)
    for p in points:
        if p["category"] == "matmul" and p["flops"]:
            rate = p["flops"] / (p["ms"] * 1e6)
            matmul[p["dtype"]] = max(matmul.get(p["dtype"], 0.0), rate)
    bandwidth = copy[-1][0] / (copy[-1][1] * 1e6)  # the largest size's: main memory
    device_profile = DeviceProfile(
        name=machine_slug(device),
        source="measured",
        device=device.split(":")[0],
        device_name=device_name(device),
        async_dispatch=on_gpu,
        backends=backends_used,
        ceilings={
            "matmul_gflops": matmul,
            "bandwidth_gbs": bandwidth,
            "dispatch_us": dispatch,
            "view_us": view,
        },
        curves={"copy": copy, "elementwise": elementwise},
        points=points,
        measured={
            "timestamp": utc_timestamp(),
            "seconds": time.perf_counter() - start,
            "torch_version": torch.__version__,
            "git_sha": git_sha(),
            "threads": torch.get_num_threads(),
            "clock": opts.clock,
            "models": list(opts.models),
            "resolutions": list(opts.resolutions),
            "dtypes": list(opts.dtypes),
            "mode": opts.mode,
            "batch_size": opts.batch_size,
            "load_avg_1m_start": load_start,
            "load_avg_1m_end": load_average(),
        },
    )
    from dimbench.measure.cost_model import CostModel

    cost = CostModel(device_profile)
    per_op = []
    for stream in streams:
        if stream.model in forwards and stream.image_size == smallest:
            if stream.dtype != opts.dtypes[0]:
                continue
            ops_ms = sum(cost.op_ms(op, framework=False) for op in stream.ops)
            n = sum(1 for op in stream.ops if not op.view)
            per_op.append(max(0.0, forwards[stream.model] - ops_ms) * 1e3 / max(n, 1))
    device_profile.ceilings["framework_us"] = statistics.median(per_op) if per_op else 0.0
    device_profile.fits = {
        "matmul": {d: m.to_dict() for d, m in cost.matmul.items() if m is not None},
        "framework_us": {"per_model": dict(zip(opts.models, per_op, strict=False))},
        "timing_overhead_us": timing_us,
    }
    return device_profile


def model_forward_ms(name: str, res: int, dtype: str, opts, backends: dict, timer) -> float:
    """Median time of a plain forward of a registered model (no recorder), warm."""
    from dimbench.registry import create_model, get_model

    torch.manual_seed(0)
    device = opts.device
    model = create_model(name, image_size=res, device=device, **backends).eval()
    latent = get_model(name).input_size(res)
    x = torch.randn(opts.batch_size, model.in_channels, *latent, device=device)
    t = torch.full((opts.batch_size,), 500.0, device=device)
    y = torch.zeros(opts.batch_size, dtype=torch.long, device=device)
    amp = TORCH_DTYPES.get(dtype) if dtype != "fp32" else None
    autocast = torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None)

    def forward():
        with autocast:
            model(x, t, y)

    return timer.median_ms(forward, 0.2, max_calls=10)
