"""Kernel benchmarks at DiM-L/2's inner width (D = 2048, N = 16, B = 1) and DiM's token counts.

Every available scan backend with DiM's options (D skip, z gate, delta bias, softplus), forward
and forward+backward; the attention backends (16 heads x 64); the causal depthwise conv.
The ratio of two rows of one run is what to compare (e.g. cpu vs ref at L = 9216); absolute
times on a shared 2-core machine move by tens of percent.
"""

import time

import pytest
import torch

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
TARGET_SECONDS = 3.0  # per benchmark: enough rounds for a median, few for the slow ones


def run(benchmark, fn, *args):
    fn(*args)  # warm-up (and the first-use compile of the cpu kernel)
    t0 = time.perf_counter()
    fn(*args)
    once = time.perf_counter() - t0
    rounds = max(3, min(30, int(TARGET_SECONDS / max(once, 1e-6))))
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=0)


def scan_inputs(length, requires_grad=False):
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
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


def scan_forward(inputs, backend):
    with torch.no_grad():
        return selective_scan(**inputs, delta_softplus=True, backend=backend)


def scan_forward_backward(inputs, backend):
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    out.backward(torch.ones_like(out))
    for v in inputs.values():
        v.grad = None


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("backend", scan_backends("cpu"))
def test_scan_forward(benchmark, backend, length):
    benchmark.group = f"scan forward L={length}"
    benchmark.extra_info.update(kernel="scan", backend=backend, length=length, mode="forward")
    run(benchmark, scan_forward, scan_inputs(length), backend)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("backend", scan_backends("cpu"))
def test_scan_forward_backward(benchmark, backend, length):
    benchmark.group = f"scan forward+backward L={length}"
    benchmark.extra_info.update(kernel="scan", backend=backend, length=length, mode="train")
    run(benchmark, scan_forward_backward, scan_inputs(length, requires_grad=True), backend)


class KernelOnly:
    """The cpu backend's kernel launches on buffers allocated (and page-faulted) once: the
    kernel's cost without the fresh-output allocations that a call through the custom op pays
    (three (B, D, L) gradients in the backward)."""

    def __init__(self, length: int):
        t = {k: v.detach() for k, v in scan_inputs(length).items()}
        self.shape, self.args = scan_cpu._prepare(*t.values())
        batch, dim, length, n, groups = self.shape
        self.ranges = scan_cpu.thread_ranges(self.shape)
        f32 = {"dtype": torch.float32}
        self.out = torch.zeros((batch, dim, length), **f32)
        self.ckpt = torch.zeros(scan_cpu.saved_shapes(t["u"], t["A"], t["z"])[0][0], **f32)
        self.dout = torch.ones_like(self.out)
        self.grads = tuple(torch.zeros_like(self.out) for _ in range(3))  # du, ddelta, dz
        nt = len(self.ranges)
        self.acc = (
            torch.zeros((nt, dim, n), **f32),
            torch.zeros((nt, dim), **f32),
            torch.zeros((nt, dim), **f32),
            torch.zeros((nt, batch, groups, n, length), **f32),
            torch.zeros((nt, batch, groups, n, length), **f32),
        )

    def forward(self):
        scan_cpu.launch_forward(self.shape, self.args, True, self.out, self.ckpt, self.ranges)

    def backward(self):
        for a in self.acc:
            a.zero_()
        scan_cpu.launch_backward(
            self.shape, self.args, True, self.dout, self.ckpt, self.grads, self.acc, self.ranges
        )


@pytest.mark.skipif("cpu" not in scan_backends("cpu"), reason="no compiled cpu kernel here")
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_scan_kernel_only(benchmark, mode, length):
    kernel = KernelOnly(length)
    kernel.forward()  # the backward reads the forward's saved states
    benchmark.group = f"scan kernel only L={length}"
    benchmark.extra_info.update(kernel="scan-kernel-only", backend="cpu", length=length, mode=mode)
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
