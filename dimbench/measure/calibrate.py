"""``dimbench calibrate``: measure this device's ceilings and the cost of the operators the
default models run, once, into a device profile (``device_profile``).

1. Ceilings: a square GEMM per dtype (the best matmul rate, with the models' own shapes), copy
   bandwidth over sizes (``dst.copy_(src)``, 16 KB to 256 MB: the cache levels show), the
   elementwise throughput of a fresh ``a + b`` over the same sizes per dtype, the cost of one
   tiny operator called from Python (dispatch) and of a view.
2. The models' operators: each default model's forward at each default resolution and dtype is
   recorded on fake tensors (``op_recorder``), and every distinct operator (overload, argument
   layouts and values) is replayed on real tensors of that layout: first call untimed, then
   timed until a small budget is spent (median). Index arguments get valid random indices; the
   selective scan gets Mamba-like inputs (A < 0, softplus(delta) in 1e-3..1e-1) so its states
   stay normal floats, as in a model.

3. Framework time: each model also runs, for real, at its smallest resolution (one patch),
   where its operators cost next to nothing; what its forward takes beyond the sum of its
   replayed operators, per operator, is the host time a model adds to each operator (module
   calls, Python between them): ``framework_us``, the one fitted ceiling (median over models).

The points keep each operator's category, dtype, shape (``dims``), FLOPs and bytes: the cost
model interpolates between them (``cost_model``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_map

from dimbench.measure.device_profile import DeviceProfile
from dimbench.measure.op_recorder import OpRecord, TensorSpec, record_step

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CLOCKS = ("wall", "process")
SWEEP_BYTES = [2**e for e in range(14, 29, 2)]  # 16 KB .. 256 MB per tensor
SLOW_CALL_S = 0.25  # a call this long is timed once more and not repeated


@dataclass
class Options:
    models: list[str]
    resolutions: list[int]
    dtypes: list[str]
    device: str = "cpu"
    mode: str = "forward"
    batch_size: int = 1
    clock: str = "wall"
    budget_s: float = 0.03  # timed seconds per operator (at least 3 calls)
    flush_bytes: int | None = None  # written between timed calls (default: 4 MB on a CPU)
    sweep_bytes: tuple[int, ...] = tuple(SWEEP_BYTES)
    gemm_size: int | None = None  # square GEMM side (default: 2048 CPU, 8192 GPU)


class Timer:
    """Times a call on ``device`` with the chosen clock (CUDA: synchronised events). On a CPU
    a ``flush_bytes`` buffer is written before each call, so the call finds its inputs in the
    shared cache but not in the core's own, as an operator inside a model does (its inputs
    were written a few operators before)."""

    def __init__(self, device: str, clock: str = "wall", flush_bytes: int = 0) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.now = time.process_time if clock == "process" else time.perf_counter
        self.flush = torch.empty(flush_bytes // 4) if flush_bytes and not self.cuda else None

    def once(self, fn: Callable[[], object]) -> float:
        if self.flush is not None:
            self.flush.add_(1.0)
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = self.now()
        fn()
        return self.now() - t0

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


# ---- replaying recorded operators


def _fill(t: torch.Tensor) -> torch.Tensor:
    """Floats uniform in [-1, 1]; integers and booleans zero (indices are fixed up after)."""
    return t.uniform_(-1.0, 1.0) if t.is_floating_point() else t.zero_()


def _materialize(spec: TensorSpec, device: str) -> torch.Tensor:
    storage = torch.empty(max(spec.storage_numel, 1), dtype=spec.dtype, device=device)
    _fill(storage)
    return storage.as_strided(spec.shape, spec.stride, spec.offset)


def _valid_indices(name: str, args: list) -> None:
    """Index arguments in range (random), where the operator reads them as indices."""

    def rand(index, bound):
        if isinstance(index, torch.Tensor) and not index.is_floating_point() and bound > 0:
            if index.dtype != torch.bool:
                index.random_(0, bound)

    if name in ("aten::index_select", "aten::gather", "aten::index_add", "aten::scatter"):
        rand(args[2], args[0].shape[args[1]])
    elif name == "aten::embedding":
        rand(args[1], args[0].shape[0])
    elif name == "aten::index" and len(args) > 1:
        for i, index in enumerate(args[1]):
            rand(index, args[0].shape[i])


def _mamba_scan_inputs(args: list) -> None:
    """The scan's (u, delta, A, B, C, D, z, delta_bias, ...) as a Mamba layer feeds it."""
    u, delta, A = args[0], args[1], args[2]
    if not (isinstance(A, torch.Tensor) and A.dim() == 2):
        return
    with torch.no_grad():
        n = A.shape[1]
        A.copy_(-torch.arange(1, n + 1, dtype=A.dtype, device=A.device).expand_as(A))
        delta.normal_(0.0, 0.1)
        for t in (u, args[3], args[4]):
            t.normal_()
        if isinstance(args[5], torch.Tensor):
            args[5].fill_(1.0)
        if isinstance(args[6], torch.Tensor):
            args[6].normal_()
        bias = args[7]
        if isinstance(bias, torch.Tensor):
            dt = torch.exp(torch.empty_like(bias).uniform_(math.log(1e-3), math.log(1e-1)))
            bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def replay_call(record: OpRecord, device: str) -> Callable[[], object]:
    """A zero-argument call of ``record``'s operator on fresh real tensors of its layout."""
    args, kwargs = tree_map(
        lambda a: _materialize(a, device) if isinstance(a, TensorSpec) else a, record.args
    )
    if isinstance(kwargs, dict) and "device" in kwargs and kwargs["device"] is not None:
        kwargs = {**kwargs, "device": torch.device(device)}
    args = list(args)
    _valid_indices(record.name, args)
    if record.name in ("dimbench::selective_scan", "dimbench::selective_scan_bwd"):
        _mamba_scan_inputs(args if record.name.endswith("scan") else args[1:])
    func = record.func
    return lambda: func(*args, **kwargs)


def distinct_ops(streams: Iterable) -> dict[tuple, OpRecord]:
    """The operators of the streams that move data, one per signature."""
    out: dict[tuple, OpRecord] = {}
    for stream in streams:
        for op in stream.ops:
            if not op.view and op.func is not None:
                out.setdefault(op.signature, op)
    return out


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
    """Measure the profile of ``opts.device`` (see the module docstring)."""
    from dimbench.measure.metadata import device_name, git_sha, load_average, machine_slug
    from dimbench.ops.backends import resolve
    from dimbench.registry import KERNELS, get_model
    from dimbench.results import utc_timestamp

    report = progress or (lambda what, done, total: None)
    start = time.perf_counter()
    load_start = load_average()
    device = opts.device
    on_gpu = device.startswith("cuda")
    flush = opts.flush_bytes if opts.flush_bytes is not None else (0 if on_gpu else 4 << 20)
    timer = Timer(device, opts.clock, flush)
    backends_used: dict[str, str] = {}

    streams = []
    smallest = {m: 8 * get_model(m).patch_size for m in opts.models}
    todo = [(m, r, d) for m in opts.models for d in opts.dtypes for r in opts.resolutions]
    todo += [(m, smallest[m], "fp32") for m in opts.models if smallest[m] not in opts.resolutions]
    for i, (model, res, dtype) in enumerate(todo):
        report(f"recording {model} @ {res}px {dtype}", i, len(todo))
        backends = {}
        for kernel in get_model(model).kernels:
            backends[KERNELS[kernel]] = resolve(kernel, "auto", device, dtype)
            backends_used[kernel] = backends[KERNELS[kernel]]
        streams.append(
            record_step(
                model, res, opts.batch_size, dtype, opts.mode, device, backends, keep_args=True
            )
        )
    ops = distinct_ops(streams)
    points, skipped = [], []
    with torch.inference_mode():
        for i, op in enumerate(ops.values()):
            report(f"{op.name} {op.dtype}", i, len(ops))
            try:
                ms = timer.median_ms(replay_call(op, device), opts.budget_s)
            except Exception as exc:  # an operator that cannot be replayed is priced by its curve
                skipped.append(f"{op.name}: {type(exc).__name__}")
                continue
            points.append(
                {
                    "op": op.name,
                    "category": op.category,
                    "dtype": op.dtype,
                    "dims": list(op.dims) if op.dims else None,
                    "flops": op.flops,
                    "bytes": op.bytes,
                    "ms": ms,
                }
            )
        report("ceilings", len(ops), len(ops))
        sizes = opts.sweep_bytes
        copy = sweep_copy(timer, device, sizes, opts.budget_s)
        elementwise = {
            d: sweep_elementwise(timer, device, TORCH_DTYPES[d], sizes, opts.budget_s)
            for d in opts.dtypes
        }
        gemm = opts.gemm_size or (8192 if on_gpu else 2048)
        matmul = {d: gemm_gflops(timer, device, TORCH_DTYPES[d], gemm) for d in opts.dtypes}
        dispatch, view = dispatch_us(timer, device)
        report("framework time", len(ops), len(ops))
        forwards = {m: model_forward_ms(m, smallest[m], device, timer) for m in opts.models}
    for p in points:
        if p["category"] == "matmul" and p["flops"]:
            rate = p["flops"] / (p["ms"] * 1e6)
            matmul[p["dtype"]] = max(matmul.get(p["dtype"], 0.0), rate)
    bandwidth = copy[-1][0] / (copy[-1][1] * 1e6)  # the largest size's: main memory
    profile = DeviceProfile(
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
            "skipped": skipped,
        },
    )
    from dimbench.measure.cost_model import CostModel

    cost = CostModel(profile)
    per_op = []
    for stream in streams:
        if stream.dtype == "fp32" and stream.image_size == smallest[stream.model]:
            ops_ms = sum(cost.op_ms(op, framework=False) for op in stream.ops)
            n = sum(1 for op in stream.ops if not op.view)
            per_op.append(max(0.0, forwards[stream.model] - ops_ms) * 1e3 / max(n, 1))
    profile.ceilings["framework_us"] = statistics.median(per_op) if per_op else 0.0
    profile.fits = {
        "matmul": {d: m.to_dict() for d, m in cost.matmul.items() if m is not None},
        "framework_us": {"per_model": dict(zip(opts.models, per_op, strict=False))},
    }
    return profile


def model_forward_ms(name: str, image_size: int, device: str, timer: Timer) -> float:
    """Median forward time of a registered model, for real (inference mode, batch 1)."""
    from dimbench.registry import create_model, get_model

    torch.manual_seed(0)
    model = create_model(name, image_size=image_size, device=device).eval()
    latent = get_model(name).input_size(image_size)
    x = torch.randn(1, model.in_channels, *latent, device=device)
    t = torch.full((1,), 500.0, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device)
    with torch.inference_mode():
        return timer.median_ms(lambda: model(x, t, y), 0.1, max_calls=30)
