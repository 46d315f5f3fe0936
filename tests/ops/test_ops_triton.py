"""The Triton kernels (selective scan, fused causal conv1d + SiLU) against their reference twins.

Without a GPU the kernels run on CPU tensors in Triton's interpreter, which Triton enables when
a kernel is decorated: TRITON_INTERPRET=1 must be in the environment before the kernel modules
are imported, and it should not leak into other tests. So, unless this process already has it,
one test re-runs this file in a subprocess with TRITON_INTERPRET=1, where the interpreted tests
run (each a few (channel, state, time) tiles: small shapes, one long sequence). Tests that need
a real GPU are marked ``cuda``; the mamba_ssm wrapper is checked against a stand-in extension.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dimbench.ops import (
    backends,
    causal_conv1d,
    causal_conv1d_ref,
    conv_backends,
    scan_backends,
    scan_flops,
    scan_mamba,
    scan_triton,
    selective_scan,
    selective_scan_ref,
    triton_util,
)
from dimbench.ops import scan as scan_mod
from tests.ops.test_ops_scan import NAMES, assert_close, make_inputs, pick, reference

INTERPRETING = triton_util.interpreting()
HAS_TRITON = triton_util.triton_version() is not None
interpreted = pytest.mark.skipif(
    not (INTERPRETING and HAS_TRITON), reason="runs in the TRITON_INTERPRET=1 subprocess"
)
needs_triton_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or triton_util.unavailable_reason() is not None,
    reason="needs triton and a CUDA GPU",
)


@pytest.mark.skipif(INTERPRETING, reason="already in the interpreter process")
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_interpreted_kernels_in_a_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider"]
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert " passed" in res.stdout and " failed" not in res.stdout, res.stdout[-3000:]


# --------------------------------------------------------------------------- scan, interpreted

CASES = [
    # (batch, dim, length, d_state, groups)
    (1, 8, 1, 4, None),
    (2, 13, 100, 16, None),  # dim not a multiple of the channel block, length not of the chunk
    (1, 16, 130, 5, 2),  # grouped B/C, d_state not a power of two, rows 2-aligned
    (1, 6, 333, 16, None),  # odd length: every row misaligned differently
]


def run_backend(inputs, softplus, grad_out, backend="triton"):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
    out.backward(grad_out.to(out.dtype))
    return out, {k: v.grad for k, v in leaves.items()}


@interpreted
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_opts", [False, True], ids=["bare", "D-z-bias-softplus"])
def test_scan_matches_float64_reference(case, with_opts):
    batch, dim, length, n, groups = case
    inputs = pick(make_inputs(batch, dim, length, n, groups, seed=length), with_opts)
    expected, grad_out, expected_grads = reference(inputs, with_opts)
    out, grads = run_backend(inputs, with_opts, grad_out)
    assert out.shape == (batch, dim, length) and out.dtype == torch.float32
    assert_close(out, expected, what="out")
    for name, g in grads.items():
        assert g is not None and g.shape == inputs[name].shape, name
        assert_close(g, expected_grads[name], rel=5e-5, what=f"d{name}")


@interpreted
@pytest.mark.parametrize("with_opts", [False, True], ids=["bare", "D-z-bias-softplus"])
def test_long_sequence_with_deltas_from_tiny_to_large(with_opts):
    """L = 2002 (16 chunks, rows misaligned); bare, delta itself spans 1e-4..10; no overflow."""
    inputs = pick(make_inputs(1, 4, 2002, 4, seed=1), with_opts)
    expected, grad_out, expected_grads = reference(inputs, with_opts)
    out, grads = run_backend(inputs, with_opts, grad_out)
    assert torch.isfinite(out).all()
    assert_close(out, expected, what="out")
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
        assert_close(g, expected_grads[name], rel=1e-4, what=f"d{name}")


@interpreted
def test_huge_decays_underflow_to_zero_not_nan():
    inputs = make_inputs(1, 8, 70, 16, delta_range=(5.0, 10.0), seed=2)
    inputs["A"] = inputs["A"] * 1e4  # exp(delta * A) underflows to 0
    expected, grad_out, expected_grads = reference(inputs, True)
    out, grads = run_backend(inputs, True, grad_out)
    assert torch.isfinite(out).all()
    assert_close(out, expected, what="out")
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_use_float32_state(dtype):
    inputs = make_inputs(2, 16, 150, 8, seed=3)
    params = ("A", "D", "delta_bias")  # float32 parameters, as in Mamba
    half = {k: (v if k in params else v.to(dtype)) for k, v in inputs.items()}
    # float64 reference on the same rounded values
    grad_out = torch.randn(2, 16, 150, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected, _, expected_grads = reference(half, True, grad_out=grad_out.double())
    out, grads = run_backend(half, True, grad_out)
    assert out.dtype == dtype
    assert_close(out.float(), expected, rel=1e-2, what="out")
    for name, g in grads.items():
        assert g.dtype == half[name].dtype, name
        assert_close(g.float(), expected_grads[name], rel=2e-2, what=f"d{name}")


@interpreted
@pytest.mark.parametrize("block", [1, 2, 8])
def test_every_channel_block_gives_the_same_result(block):
    """Channels per program (one warp each) change only how work is split."""
    inputs = make_inputs(2, 12, 70, 4, groups=2, seed=5)
    args = [inputs[k] for k in NAMES]
    gout = torch.randn(2, 12, 70, generator=torch.Generator().manual_seed(0))
    cfg = scan_triton.LaunchConfig(block=block)
    default = scan_triton.scan_fwd(*args, delta_softplus=True, save=True)
    out, ckpt = scan_triton.scan_fwd(*args, delta_softplus=True, save=True, config=cfg)
    torch.testing.assert_close(out, default[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ckpt, default[1], rtol=1e-6, atol=1e-6)
    g_default = scan_triton.scan_bwd(gout, *args, True, default[1])
    g_block = scan_triton.scan_bwd(gout, *args, True, ckpt, config=cfg)
    for name, a, b in zip(NAMES, g_block, g_default, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@interpreted
@pytest.mark.parametrize("length", [300, 301])  # rows misaligned by 0-3 steps, or not at all
def test_saved_states_are_the_states_before_each_chunk(length):
    inputs = pick(make_inputs(2, 5, length, 3, seed=6), with_opts=False)
    u = inputs["u"]
    _, ckpt = scan_triton.scan_fwd(**inputs, save=True)
    assert ckpt.shape == scan_triton.saved_shapes(u, inputs["A"], None)[0][0]
    vec, chunk = scan_triton.vec_for(u), scan_triton.chunk_for(u)
    # every state of the reference: with C = e_n the output at step t is state n after t
    states = torch.stack(
        [
            selective_scan_ref(
                **{**inputs, "C": torch.eye(3)[n][None, :, None].expand(2, 3, length)}
            )
            for n in range(3)
        ],
        dim=-1,
    )  # (batch, dim, L, N)
    for b in range(2):
        for d in range(5):
            mis = ((b * 5 + d) * length) % vec  # a row is walked from the aligned address before it
            walked = -(-(length + mis) // chunk)
            assert (ckpt[b, d, 0] == 0).all()
            for c in range(1, walked):
                t = c * chunk - mis - 1  # the last step of the chunk before
                torch.testing.assert_close(ckpt[b, d, c], states[b, d, t], rtol=1e-5, atol=1e-6)


@interpreted
def test_auto_never_picks_the_interpreter_on_cpu():
    assert "triton" in scan_backends("cpu")
    assert backends.resolve("scan", "auto", "cpu") != "triton"
    assert conv_backends("cpu")[0] != "triton"


@interpreted
def test_mamba_mixer_with_triton_kernels_matches_the_reference_twins():
    from dimbench.models.mamba_mixer import MambaMixer

    torch.manual_seed(0)
    fast = MambaMixer(16, d_state=4, d_conv=3, scan_backend="triton", conv_backend="triton")
    twin = MambaMixer(16, d_state=4, d_conv=3, scan_backend="ref", conv_backend="torch")
    twin.load_state_dict(fast.state_dict())
    x = torch.randn(2, 70, 16)
    outs, grads = [], []
    for m in (fast, twin):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- conv, interpreted


@interpreted
@pytest.mark.parametrize("shape", [(2, 20, 1, 3), (2, 20, 300, 4), (1, 16, 129, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_conv_matches_reference_forward_and_backward(shape, bias, activation):
    batch, dim, length, width = shape
    g = torch.Generator().manual_seed(length)
    x = torch.randn(batch, dim, length, generator=g, dtype=torch.float64)
    w = torch.randn(dim, width, generator=g, dtype=torch.float64)
    b = torch.randn(dim, generator=g, dtype=torch.float64) if bias else None
    ins = [t for t in (x, w, b) if t is not None]
    ref_leaves = [t.clone().requires_grad_() for t in ins]
    expected = causal_conv1d_ref(*ref_leaves[:2], ref_leaves[2] if bias else None, activation)
    grad_out = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    expected.backward(grad_out)
    leaves = [t.float().requires_grad_() for t in ins]
    out = causal_conv1d(*leaves[:2], leaves[2] if bias else None, activation, backend="triton")
    out.backward(grad_out.float())
    assert out.dtype == torch.float32
    assert_close(out, expected.detach(), rel=1e-6, what="out")
    for name, a, e in zip(("x", "weight", "bias"), leaves, ref_leaves, strict=False):
        assert_close(a.grad, e.grad, rel=1e-6, what=f"d{name}")


@interpreted
def test_conv_bf16_input_float32_parameters():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 100, generator=g).bfloat16().requires_grad_()
    w = torch.randn(16, 4, generator=g).requires_grad_()
    b = torch.randn(16, generator=g).requires_grad_()
    out = causal_conv1d(x, w, b, "silu", backend="triton")
    assert out.dtype == torch.bfloat16
    expected = causal_conv1d_ref(x.detach().double(), w.detach().double(), b.detach().double())
    assert_close(out.float(), torch.nn.functional.silu(expected), rel=1e-2, what="out")
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32


@interpreted
def test_conv_flops_counted_like_torchs_conv():
    x = torch.randn(2, 8, 50, requires_grad=True)
    w = torch.randn(8, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = causal_conv1d(x, w, None, "silu", backend="triton")
    assert counter.get_total_flops() == 2 * 2 * 8 * 50 * 3
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * 2 * 2 * 8 * 50 * 3


# --------------------------------------------------------------------------- without triton


def test_triton_backend_is_registered_with_its_saved_shapes_on_meta():
    """Shapes only (no kernel runs): the fake path uses the backend's saved shapes."""
    u = torch.empty(2, 64, 300, device="meta", requires_grad=True)
    A = torch.empty(64, 16, device="meta")
    B = torch.empty(2, 16, 300, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = selective_scan(u, u, A, B, B, A[:, 0], u, A[:, 0], True, backend="triton")
    assert out.shape == u.shape
    assert counter.get_total_flops() == scan_flops(u.shape, A.shape, True, True, True, True)
    shapes = scan_triton.saved_shapes(u, A, u)
    assert shapes == [((2, 64, 3, 16), torch.float32)]  # 300 + 3 steps in chunks of 128


def test_launch_config_from_the_environment(monkeypatch):
    monkeypatch.delenv(scan_triton.CONFIG_ENV, raising=False)
    assert scan_triton.launch_config("fwd") == scan_triton.LaunchConfig()
    monkeypatch.setenv(scan_triton.CONFIG_ENV, "fwd=8, bwd=2,fwd_maxnreg=168")
    assert scan_triton.launch_config("fwd") == scan_triton.LaunchConfig(8, 168)
    assert scan_triton.launch_config("bwd") == scan_triton.LaunchConfig(2, None)
    for bad in ("fwd=3", "fwd=four", "warps=4"):
        monkeypatch.setenv(scan_triton.CONFIG_ENV, bad)
        with pytest.raises(ValueError, match=scan_triton.CONFIG_ENV):
            scan_triton.launch_config("fwd")


def test_chunks_follow_the_activation_dtype():
    """A lane takes one 16-byte vector: 8 steps of bf16, 4 of fp32; a chunk is 32 lanes."""
    u32 = torch.empty(1, 2, 1000)
    u16 = u32.bfloat16()
    assert (scan_triton.vec_for(u32), scan_triton.chunk_for(u32)) == (4, 128)
    assert (scan_triton.vec_for(u16), scan_triton.chunk_for(u16)) == (8, 256)
    assert scan_triton.vec_for(u32, u16) == 8  # the narrowest activation decides
    assert scan_triton.n_chunks_for(u16) == 4  # 1000 steps + up to 7 of misalignment


def test_unusable_backends_say_why():
    if "triton" not in scan_backends("cpu"):
        inputs = make_inputs(1, 4, 5, 2)
        with pytest.raises(RuntimeError, match="triton"):
            selective_scan(**inputs, backend="triton")
    if not INTERPRETING:
        with pytest.raises(RuntimeError, match="conv backend 'triton'"):
            causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 3), backend="triton")


class FakeSelectiveScanCuda(types.ModuleType):
    """Stands in for mamba_ssm's extension: its call signature (new or old) on the reference."""

    def __init__(self, with_cu_seqlens: bool):
        super().__init__("selective_scan_cuda")
        self.with_cu_seqlens = with_cu_seqlens
        self.calls: list[str] = []

    def _arity(self, args, n):
        if len(args) != n + self.with_cu_seqlens:
            raise TypeError("fwd(): incompatible function arguments")

    def fwd(self, *args):
        self._arity(args, 9)
        u, delta, A, B, C, D, z, bias, softplus = args[:9]
        assert B.dim() == 4 and A.dtype == torch.float32 and delta.dtype == u.dtype
        self.calls.append("fwd")
        out = selective_scan_ref(u, delta, A, B, C, D, None, bias, softplus)
        x = torch.zeros(scan_mamba.saved_shapes(u, A, z)[0][0])
        return (out, x) + ((out * torch.nn.functional.silu(z.float())).to(u.dtype),) * (
            z is not None
        )

    def bwd(self, *args):
        self._arity(args, 14)
        u, delta, A, B, C, D, z, bias, dout, x, out, dz, softplus, recompute = args[:14]
        assert x.shape == scan_mamba.saved_shapes(u, A, z)[0][0] and dz is None and not recompute
        assert (out is not None) == (z is not None)
        self.calls.append("bwd")
        g = scan_mod.scan_ref.selective_scan_ref_bwd(dout, u, delta, A, B, C, D, z, bias, softplus)
        du, ddelta, dA, dB, dC, dD, dz, dbias = g
        return [du, ddelta, dA, dB, dC, dD, dbias] + ([dz] if z is not None else [])


@pytest.mark.parametrize("with_cu_seqlens", [True, False], ids=["new-arity", "old-arity"])
def test_mamba_ssm_wrapper_plumbs_arguments_and_gradients(monkeypatch, with_cu_seqlens):
    fake = FakeSelectiveScanCuda(with_cu_seqlens)
    monkeypatch.setattr(scan_mamba, "_ext", lambda: fake)
    monkeypatch.setattr(scan_mamba, "_takes_cu_seqlens", {})
    inputs = make_inputs(2, 6, 20, 3, seed=7)
    args = [inputs[k] for k in NAMES]
    outs = scan_mamba.forward(*args, True, True)
    assert len(outs) == 1 + len(scan_mamba.saved_shapes(inputs["u"], inputs["A"], inputs["z"]))
    expected = selective_scan_ref(*args, delta_softplus=True)
    torch.testing.assert_close(outs[0], expected)
    gout = torch.randn_like(expected)
    grads = scan_mamba.backward(gout, *args, True, outs[1:])
    ref_grads = scan_mod.scan_ref.selective_scan_ref_bwd(gout, *args, delta_softplus=True)
    for name, a, b in zip(NAMES, grads, ref_grads, strict=True):
        assert a.shape == inputs[name].shape, name
        torch.testing.assert_close(a, b, msg=name)
    assert fake.calls == ["fwd", "bwd"]
    assert scan_mamba._takes_cu_seqlens == {"fwd": with_cu_seqlens, "bwd": with_cu_seqlens}


def test_mamba_ssm_missing_is_a_reason_not_an_error():
    if "mamba_ssm" in scan_backends():
        pytest.skip("mamba_ssm is installed here")
    reason = backends.unavailable_reason("scan", "mamba_ssm")
    assert reason and ("selective_scan_cuda" in reason or "CUDA" in reason)


# --------------------------------------------------------------------------- on a GPU


# DiM's token counts (366 at 256 px, 1230 at 512, 9806 at 1536), a grouped B/C, one step
CUDA_CASES = [
    (2, 128, 366, 16, None),
    (2, 256, 1230, 16, None),
    (1, 96, 4100, 16, 3),
    (1, 64, 9806, 16, None),
    (1, 64, 1, 16, None),
]


@pytest.mark.cuda
@needs_triton_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_opts", [True, False], ids=["D-z-bias-softplus", "bare"])
def test_cuda_scan_matches_reference(case, dtype, with_opts):
    """Every GPU scan backend (triton; mamba_ssm where installed) against float64: outputs
    and all gradients, delta log-uniform over 1e-4..10 (the check the GPU runbook runs)."""
    batch, dim, length, n, groups = case
    inputs = pick(make_inputs(batch, dim, length, n, groups, seed=8), with_opts)
    for backend in [b for b in ("triton", "mamba_ssm") if b in scan_backends("cuda")]:
        _check_cuda_backend(inputs, dtype, with_opts, backend)


def _check_cuda_backend(inputs, dtype, with_opts, backend):
    params = ("A", "D", "delta_bias")
    cast = {k: (v if k in params else v.to(dtype)) for k, v in inputs.items()}
    expected, grad_out, expected_grads = reference(cast, with_opts)
    dev = {k: v.cuda() for k, v in cast.items()}
    out, grads = run_backend(dev, with_opts, grad_out.cuda(), backend=backend)
    rel = 2e-5 if dtype == torch.float32 else 1e-2
    assert_close(out.float().cpu(), expected, rel=rel, what="out")
    for name, g in grads.items():
        assert_close(g.float().cpu(), expected_grads[name], rel=10 * rel, what=f"d{name}")


@pytest.mark.cuda
@needs_triton_cuda
def test_cuda_auto_picks_a_gpu_kernel_and_conv_matches():
    name = backends.resolve("scan", "auto", "cuda")
    assert name == ("mamba_ssm" if "mamba_ssm" in scan_backends("cuda") else "triton")
    x = torch.randn(2, 64, 1000, device="cuda", requires_grad=True)
    w = torch.randn(64, 4, device="cuda", requires_grad=True)
    out = causal_conv1d(x, w, None, "silu", backend="triton")
    expected = causal_conv1d_ref(x.double(), w.double(), None, "silu")
    assert_close(out, expected.detach(), rel=1e-5, what="conv out")


@pytest.mark.cuda
@needs_triton_cuda
@pytest.mark.parametrize("length", [1230, 9806])
def test_cuda_fused_conv_gradients_match_float64(length):
    x = torch.randn(2, 256, length, device="cuda", requires_grad=True)
    w = torch.randn(256, 4, device="cuda", requires_grad=True)
    b = torch.randn(256, device="cuda", requires_grad=True)
    out = causal_conv1d(x, w, b, "silu", backend="triton")
    grad = torch.randn_like(out)
    out.backward(grad)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = causal_conv1d_ref(*leaves, "silu")
    ref.backward(grad.double())
    assert_close(out, ref.detach(), rel=1e-5, what="conv out")
    for name, t, r in zip(("dx", "dw", "db"), (x, w, b), leaves, strict=True):
        assert_close(t.grad, r.grad, rel=1e-5, what=name)
