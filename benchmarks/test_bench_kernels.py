"""Kernel benchmarks at DiM-L/2's inner width (D = 2048, N = 16, B = 1) and DiM's token counts.

Every available scan backend with DiM's options (D skip, z gate, delta bias, softplus), forward
and forward+backward through the op (autograd, as a model calls it), float32 and bfloat16; the
cpu kernel alone on buffers allocated once; the cpu forward over three delta distributions (the
denormal check); the attention backends (16 heads x 64); the causal depthwise conv.
The ratio of two rows of one run is what to compare (e.g. cpu vs ref at L = 9216); absolute
times on a shared 2-core machine move by tens of percent.
"""

import math
import time

import pytest
import torch

from dimbench.dtypes import TORCH_DTYPES
from dimbench.ops import (
    attention,
    causal_conv1d,
    conv_backends,
    scan_backends,
    scan_cpu,
    selective_scan,
)

LENGTHS = [256, 1024, 4096, 9216]
DIM, DSTATE, HEADS, HEAD_DIM = 2048, 16, 16, 64
DT_RANK = math.ceil(DIM / 2 / 16)  # DiM-L/2: d_model 1024, d_inner 2048
TARGET_SECONDS = 3.0  # per benchmark: enough rounds for a median, few for the slow ones
DTYPES = {k: TORCH_DTYPES[k] for k in ("fp32", "bf16")}
HAS_CPU_KERNEL = "cpu" in scan_backends("cpu")


def run(benchmark, fn, *args):
    fn(*args)  # warm-up (and the first-use compile of the cpu kernel)
    t0 = time.perf_counter()
    fn(*args)
    once = time.perf_counter() - t0
    rounds = max(3, min(30, int(TARGET_SECONDS / max(once, 1e-6))))
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=0)


def scan_inputs(length, requires_grad=False, dtype=torch.float32):
    """DiM's options; u, delta, B, C, z in ``dtype`` (A, D, delta_bias float32, as in Mamba)."""
    g = torch.Generator().manual_seed(0)
    t = {
        "u": torch.randn(1, DIM, length, generator=g),
        "delta": torch.randn(1, DIM, length, generator=g) - 4.0,
        "A": -torch.exp(torch.randn(DIM, DSTATE, generator=g)),
        "B": torch.randn(1, DSTATE, length, generator=g),
        "C": torch.randn(1, DSTATE, length, generator=g),
        "D": torch.ones(DIM),
        "z": torch.randn(1, DIM, length, generator=g),
        "delta_bias": torch.full((DIM,), -4.0),
    }
    params = ("A", "D", "delta_bias")
    t = {k: v if k in params else v.to(dtype) for k, v in t.items()}
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


def delta_inputs(length, deltas):
    """Forward inputs whose decays exp(delta * A) span what models meet: delta ~ U(0, 1),
    delta ~ U(0, 100) (states decay into subnormals), and "trained": softplus(dt_proj(x) +
    dt_bias) as the mixer makes them, with Mamba's dt_proj init (weights U(+-R^-1/2), bias =
    softplus^-1 of a log-uniform dt in [1e-3, 1e-1]) and A = -(1..16) (S4D-real)."""
    g = torch.Generator().manual_seed(0)
    t = {
        "u": torch.randn(1, DIM, length, generator=g),
        "A": -torch.exp(torch.randn(DIM, DSTATE, generator=g)),
        "B": torch.randn(1, DSTATE, length, generator=g),
        "C": torch.randn(1, DSTATE, length, generator=g),
    }
    if deltas == "trained":
        weight = (torch.rand(DIM, DT_RANK, generator=g) * 2 - 1) * DT_RANK**-0.5
        t["delta"] = weight @ torch.randn(1, DT_RANK, length, generator=g)
        dt = torch.exp(torch.rand(DIM, generator=g) * math.log(100) + math.log(1e-3))
        t["delta_bias"] = dt + torch.log(-torch.expm1(-dt))
        t["A"] = -torch.arange(1, DSTATE + 1, dtype=torch.float32).expand(DIM, DSTATE)
        return t, True
    high = {"U(0,1)": 1.0, "U(0,100)": 100.0}[deltas]
    t["delta"] = high * torch.rand(1, DIM, length, generator=g)
    return t, False


def scan_forward(inputs, backend, softplus=True):
    with torch.no_grad():
        return selective_scan(**inputs, delta_softplus=softplus, backend=backend)


class ForwardBackward:
    """Forward and backward through the op, the way a model calls it (the upstream gradient
    made once: its allocation is not the scan's)."""

    def __init__(self, inputs, backend):
        self.inputs, self.backend = inputs, backend
        self.grad = torch.ones_like(inputs["u"])

    def __call__(self):
        out = selective_scan(**self.inputs, delta_softplus=True, backend=self.backend)
        out.backward(self.grad)
        for v in self.inputs.values():
            v.grad = None


def scan_cases():
    """(backend, dtype) pairs: every backend in float32; the cpu kernel also in bfloat16."""
    cases = [(b, "fp32") for b in scan_backends("cpu")]
    return cases + ([("cpu", "bf16")] if HAS_CPU_KERNEL else [])


def scan_info(benchmark, kernel, backend, length, mode, dtype):
    benchmark.group = f"{kernel} {mode} {dtype} L={length}"
    benchmark.extra_info.update(
        kernel=kernel, backend=backend, length=length, mode=mode, dtype=dtype
    )


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("case", scan_cases(), ids="-".join)
def test_scan_forward(benchmark, case, length):
    backend, dtype = case
    scan_info(benchmark, "scan", backend, length, "forward", dtype)
    run(benchmark, scan_forward, scan_inputs(length, dtype=DTYPES[dtype]), backend)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("case", scan_cases(), ids="-".join)
def test_scan_forward_backward(benchmark, case, length):
    backend, dtype = case
    scan_info(benchmark, "scan", backend, length, "train", dtype)
    inputs = scan_inputs(length, requires_grad=True, dtype=DTYPES[dtype])
    run(benchmark, ForwardBackward(inputs, backend))


@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no compiled cpu kernel here")
@pytest.mark.parametrize("deltas", ["U(0,1)", "U(0,100)", "trained"])
def test_scan_forward_deltas(benchmark, deltas):
    """No input-dependent cliff: the three rows should match (within 1.3x)."""
    length = 4096
    inputs, softplus = delta_inputs(length, deltas)
    scan_info(benchmark, "scan-deltas", "cpu", length, "forward", "fp32")
    benchmark.extra_info["deltas"] = deltas
    run(benchmark, scan_forward, inputs, "cpu", softplus)


class KernelOnly:
    """The cpu backend's kernel launches on buffers allocated (and page-faulted) once: the
    kernel's cost without the fresh-output allocations that a call through the custom op pays
    (the output; three (B, D, L) gradients in the backward)."""

    def __init__(self, length: int, dtype: torch.dtype = torch.float32):
        t = {k: v.detach() for k, v in scan_inputs(length, dtype=dtype).items()}
        self.out = torch.zeros_like(t["u"])
        self.prep = scan_cpu.Prepared(*t.values(), True, dout=torch.ones_like(self.out))
        batch, dim, length, n, groups = self.prep.shape
        self.ckpt = torch.zeros(scan_cpu.saved_shapes(t["u"], t["A"], t["z"])[0][0])
        self.grads = tuple(torch.zeros_like(self.out) for _ in range(3))  # du, ddelta, dz
        self.partials = self.prep.partials()
        self.sums = (torch.zeros(dim, n), torch.zeros(dim), torch.zeros(dim))  # dA, dD, dbias
        self.dBC = tuple(torch.zeros(batch, groups, n, length, dtype=dtype) for _ in range(2))

    def forward(self):
        self.prep.forward(self.out, self.ckpt)

    def backward(self):
        self.prep.backward(self.ckpt, *self.grads, self.partials)
        self.prep.reduce(self.partials, *self.sums, *self.dBC)


@pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no compiled cpu kernel here")
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_kernel_only(benchmark, dtype, mode, length):
    kernel = KernelOnly(length, DTYPES[dtype])
    kernel.forward()  # the backward reads the forward's saved states
    scan_info(benchmark, "scan-kernel-only", "cpu", length, mode, dtype)
    run(benchmark, kernel.forward if mode == "forward" else kernel.backward)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_attention_forward(benchmark, backend, length):
    if backend == "math" and length > 4096:
        pytest.skip("explicit softmax(QK^T)V at 9216 tokens needs ~10 GB")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, generator=g) for _ in range(3))
    benchmark.group = f"attention forward L={length}"
    benchmark.extra_info.update(kernel="attention", backend=backend, length=length)

    def fwd():
        with torch.no_grad():
            return attention(q, k, v, backend=backend)

    run(benchmark, fwd)


@pytest.mark.parametrize("length", LENGTHS)
def test_causal_conv_forward(benchmark, length):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, DIM, length, generator=g), torch.randn(DIM, 3), torch.randn(DIM)
    benchmark.group = f"causal conv forward L={length}"
    benchmark.extra_info.update(kernel="conv", backend="torch", length=length)

    def fwd():
        with torch.no_grad():
            return causal_conv1d(x, w, b, activation="silu")

    run(benchmark, fwd)


def test_matmul_fp32(benchmark):
    """The machine's fp32 matmul rate, the ceiling to read the kernels' GFLOP/s against."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2048, 2048, generator=g) for _ in range(2))
    benchmark.group = "fp32 matmul 2048^3"
    benchmark.extra_info.update(kernel="matmul", flops=2 * 2048**3)
    run(benchmark, torch.mm, a, b)


# ----------------------------------------------------------------- conv kernel and fused mixer
# The conv at DiM's inner widths (E = 1024 for DiM-S/2, 2048 for DiM-L/2) and token counts
# (1230, 4494, 9806: 512, 1024 and 1536 px), every CPU conv backend, fp32 and bf16 activations;
# the mixer at DiM-S/2's widths (D = 512, E = 1024, N = 16) as the fused node and as its twin.
# Compare rows of one run; for A/B ratios on a shared machine prefer interleaved CPU time.

CONV_LENGTHS = [1230, 4494, 9806]
CONV_DIMS = [1024, 2048]


def conv_inputs(dim, length, dtype, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, dim, length, generator=g).to(dtype)
    w, b = torch.randn(dim, 3, generator=g), torch.randn(dim, generator=g)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


def autocast_bf16(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", CONV_LENGTHS)
@pytest.mark.parametrize("dim", CONV_DIMS)
@pytest.mark.parametrize("backend", conv_backends("cpu"))
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_conv_backends(benchmark, mode, backend, dim, length, dtype):
    x, w, b = conv_inputs(dim, length, dtype, requires_grad=mode == "train")
    grad = torch.ones_like(x)
    benchmark.group = f"causal conv + SiLU {mode} E={dim} L={length} {str(dtype)[6:]}"
    benchmark.extra_info.update(kernel="conv", backend=backend, length=length, dim=dim, mode=mode)

    def fwd():
        with torch.no_grad(), autocast_bf16(dtype):
            return causal_conv1d(x, w, b, activation="silu", backend=backend)

    def train():
        with autocast_bf16(dtype):
            out = causal_conv1d(x, w, b, activation="silu", backend=backend)
        out.backward(grad)
        for t in (x, w, b):
            t.grad = None

    run(benchmark, fwd if mode == "forward" else train)


MIXER_VARIANTS = {
    "twin": dict(fused=False, recompute_in_proj=False),
    "fused": dict(fused=True, recompute_in_proj=False),
    "fused+in_proj": dict(fused=True, recompute_in_proj=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [1230, 4494])
@pytest.mark.parametrize("variant", list(MIXER_VARIANTS))
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_mamba_mixer(benchmark, mode, variant, length, dtype):
    from dimbench.models.mamba_mixer import MambaMixer

    torch.manual_seed(0)
    mixer = MambaMixer(512, d_state=DSTATE, d_conv=3, n_layer=25, **MIXER_VARIANTS[variant])
    x = torch.randn(1, length, 512, requires_grad=mode == "train")
    benchmark.group = f"DiM-S/2 mixer {mode} L={length} {str(dtype)[6:]}"
    benchmark.extra_info.update(kernel="mixer", backend=variant, length=length, mode=mode)

    def fwd():
        with torch.no_grad(), autocast_bf16(dtype):
            return mixer(x)

    def train():
        with autocast_bf16(dtype):
            out = mixer(x)
        out.backward(torch.ones_like(out))
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    run(benchmark, fwd if mode == "forward" else train)
