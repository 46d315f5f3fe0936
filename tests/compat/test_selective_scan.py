"""mamba_ssm's ``tests/ops/test_selective_scan.py`` (state-spaces/mamba, Apache-2.0) run through
the compatibility layer: the same inputs, seeds and tolerances and the same assertions, on the
CPU, importing from ``mamba_ssm.ops.selective_scan_interface`` as that file does. Beyond
mamba's active grid it also runs ``return_last_state=False`` and fixed (D, N) B and C (both in
its commented-out parameter lists).

The default run is a fast subset; ``DIMBENCH_COMPAT_FULL_GRID=1`` runs mamba's whole grid
(sequence lengths up to 4096, every input dtype). ``test_selective_scan_grads`` asserts the
gradients with the tolerances mamba's file leaves commented out.
"""

from __future__ import annotations

import os

import pytest
import torch

from dimbench import compat

compat.install()
from mamba_ssm.ops.selective_scan_interface import (  # noqa: E402
    mamba_inner_fn,
    mamba_inner_ref,
    selective_scan_fn,
    selective_scan_ref,
)

FULL = os.environ.get("DIMBENCH_COMPAT_FULL_GRID") == "1"
DEVICE = "cpu"
SEQLENS = [128, 256, 512, 1024, 2048, 4096] if FULL else [128, 372]
ITYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerances(itype: torch.dtype) -> tuple[float, float]:
    rtol, atol = (6e-4, 2e-3) if itype == torch.float32 else (3e-3, 5e-3)
    if itype == torch.bfloat16:
        rtol, atol = 3e-2, 5e-2
    return rtol, atol


def scan_inputs(is_variable_B, is_variable_C, varBC_groups, seqlen, itype, wtype=torch.float32):
    """mamba's test inputs, drawn in its order from seed 0: A, B, C, D, z, delta_bias, u,
    delta, each a leaf that requires grad."""
    torch.random.manual_seed(0)
    batch_size, dim, dstate = 2, 4, 8

    def bc_shape(variable: bool) -> tuple[int, ...]:
        if not variable:
            return (dim, dstate)
        if varBC_groups == 1:
            return (batch_size, dstate, seqlen)
        return (batch_size, varBC_groups, dstate, seqlen)

    A = (-0.5 * torch.rand(dim, dstate, device=DEVICE, dtype=wtype)).requires_grad_()
    B = torch.randn(
        *bc_shape(is_variable_B),
        device=DEVICE,
        dtype=itype if is_variable_B else wtype,
        requires_grad=True,
    )
    C = torch.randn(
        *bc_shape(is_variable_C),
        device=DEVICE,
        dtype=itype if is_variable_C else wtype,
        requires_grad=True,
    )
    D = torch.randn(dim, device=DEVICE, dtype=torch.float32, requires_grad=True)
    z = torch.randn(batch_size, dim, seqlen, device=DEVICE, dtype=itype, requires_grad=True)
    delta_bias = (0.5 * torch.rand(dim, device=DEVICE, dtype=torch.float32)).requires_grad_()
    u = torch.randn(batch_size, dim, seqlen, device=DEVICE, dtype=itype, requires_grad=True)
    delta = (0.5 * torch.rand(batch_size, dim, seqlen, device=DEVICE, dtype=itype)).requires_grad_()
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)


def twins(inputs: dict) -> dict:
    return {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}


def run_scan(fn, x: dict, return_last_state: bool):
    out, *rest = fn(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
        delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=return_last_state,
    )  # fmt: skip
    return out, (rest[0] if return_last_state else None)


@pytest.mark.parametrize("itype", ITYPES if FULL else [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seqlen", SEQLENS)
@pytest.mark.parametrize("return_last_state", [False, True])
@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_selective_scan(
    is_variable_B, is_variable_C, varBC_groups, return_last_state, seqlen, itype
):
    if varBC_groups > 1 and (not is_variable_B or not is_variable_C):
        pytest.skip()  # not applicable (mamba's rule)
    rtol, atol = tolerances(itype)
    x = scan_inputs(is_variable_B, is_variable_C, varBC_groups, seqlen, itype)
    ref = twins(x)
    out, state = run_scan(selective_scan_fn, x, return_last_state)
    out_ref, state_ref = run_scan(selective_scan_ref, ref, return_last_state)

    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)
    if return_last_state:
        assert torch.allclose(state, state_ref, rtol=rtol, atol=atol)

    g = torch.randn_like(out)
    out_ref.backward(g)
    out.backward(g)


@pytest.mark.parametrize("itype", ITYPES)
@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_selective_scan_grads(is_variable_B, varBC_groups, itype):
    """The gradient assertions mamba's file keeps commented out, with its tolerances."""
    if varBC_groups > 1 and not is_variable_B:
        pytest.skip()
    rtol, atol = tolerances(itype)
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)  # with z, as mamba's file sets them
    x = scan_inputs(is_variable_B, True, varBC_groups, 128, itype)
    ref = twins(x)
    out, _ = run_scan(selective_scan_fn, x, False)
    out_ref, _ = run_scan(selective_scan_ref, ref, False)
    g = torch.randn_like(out)
    out_ref.backward(g)
    out.backward(g)

    def grads(name):
        return x[name].grad, ref[name].grad.to(x[name].grad.dtype)

    assert torch.allclose(*grads("u"), rtol=rtol * 2, atol=atol * 2)
    assert torch.allclose(*grads("delta"), rtol=rtol * 5, atol=atol * 10)
    assert torch.allclose(*grads("A"), rtol=rtolw, atol=atolw * 5)
    assert torch.allclose(
        *grads("B"),
        rtol=rtolw if not is_variable_B else rtol,
        atol=atolw if not is_variable_B else atol,
    )
    assert torch.allclose(*grads("C"), rtol=rtol, atol=atol)
    assert torch.allclose(*grads("D"), rtol=rtolw, atol=atolw)
    assert torch.allclose(*grads("z"), rtol=rtolw, atol=atolw)
    assert torch.allclose(*grads("delta_bias"), rtol=rtolw, atol=atolw)


@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_mamba_inner_fn(is_variable_B, is_variable_C):
    itype, seqlen = torch.float32, 128
    rtol, atol = tolerances(itype)
    torch.random.manual_seed(0)
    batch_size, dim, dstate, dt_rank = 2, 768, 8, 48
    n_variable = int(is_variable_B) + int(is_variable_C)

    def leaf(*shape, dtype=itype):
        return torch.randn(*shape, device=DEVICE, dtype=dtype, requires_grad=True)

    xz = leaf(batch_size, 2 * dim, seqlen)
    conv1d_weight = leaf(dim, 1, 3)
    conv1d_bias = leaf(dim)
    x_proj_weight = leaf(dt_rank + n_variable * dstate, dim)
    delta_proj_weight = leaf(dim, dt_rank)
    out_proj_weight = leaf(dim // 2, dim)
    out_proj_bias = None
    A = (-0.5 * torch.rand(dim, dstate, device=DEVICE)).requires_grad_()
    B = None if is_variable_B else leaf(dim, dstate, dtype=torch.float32)
    C = None if is_variable_C else leaf(dim, dstate, dtype=torch.float32)
    D = 0 * torch.randn(dim, device=DEVICE, dtype=torch.float32, requires_grad=True)
    delta_bias = (0.5 * torch.rand(dim, device=DEVICE, dtype=torch.float32)).requires_grad_()
    args = [xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
            out_proj_bias, A, B, C, D]  # fmt: skip
    ref_args = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    db_ref = delta_bias.detach().clone().requires_grad_()

    out = mamba_inner_fn(*args, delta_bias=delta_bias, delta_softplus=True)
    out_ref = mamba_inner_ref(*ref_args, delta_bias=db_ref, delta_softplus=True)

    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("is_variable_C", [False, True])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_mamba_inner_fn_against_float64(is_variable_B, is_variable_C):
    """Beyond mamba's file: the fp32 result against the unfused sequence in float64 (the
    ``ref`` scan backend, F.conv1d), relative L2 error: mamba_inner_ref is itself built on the
    layer's conv and scan, so the comparison above does not pin either down alone."""
    torch.random.manual_seed(0)
    batch_size, dim, dstate, dt_rank, seqlen = 2, 64, 8, 8, 96
    n_variable = int(is_variable_B) + int(is_variable_C)
    args = [
        torch.randn(batch_size, 2 * dim, seqlen),
        torch.randn(dim, 1, 3) * 0.5,
        torch.randn(dim) * 0.1,
        torch.randn(dt_rank + n_variable * dstate, dim) / dim**0.5,
        torch.randn(dim, dt_rank) / dt_rank**0.5,
        torch.randn(dim // 2, dim) / dim**0.5,
        torch.randn(dim // 2) * 0.1,
        -0.5 * torch.rand(dim, dstate),
        None if is_variable_B else torch.randn(dim, dstate),
        None if is_variable_C else torch.randn(dim, dstate),
        torch.randn(dim),
    ]
    delta_bias = 0.5 * torch.rand(dim)
    out = mamba_inner_fn(*args, delta_bias=delta_bias)
    as64 = [a.double() if a is not None else None for a in args]
    with compat.use_backends(scan="ref", conv="torch"):
        want = mamba_inner_ref(*as64, delta_bias=delta_bias.double())
    assert ((out.double() - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.parametrize("is_variable_B", [False, True])
def test_complex_A_against_the_closed_form(is_variable_B):
    """Beyond mamba's file (its complex64 grid is commented out): complex A (the ops' ``ref``
    backend, which ``auto`` picks for it) against
    x_t = sum_{s <= t} exp(A (c_t - c_s)) dt_s B_s u_s with c the running sum of dt,
    y = 2 Re <C_t, x_t> + D u, gated by silu(z)."""
    torch.manual_seed(0)
    batch, dim, n, length = 2, 4, 3, 12
    A = torch.complex(-0.5 * torch.rand(dim, n), torch.randn(dim, n)).requires_grad_()
    B = (
        torch.randn(batch, n, 2 * length)  # real pairs along time
        if is_variable_B
        else torch.randn(dim, n, dtype=torch.complex64)
    )
    C = torch.randn(batch, n, 2 * length)
    u, z = torch.randn(batch, dim, length), torch.randn(batch, dim, length)
    delta, D = 0.5 * torch.rand(batch, dim, length), torch.randn(dim)
    out, state = selective_scan_fn(u, delta, A, B, C, D, z=z, return_last_state=True)

    def as_complex(M):  # (b, n, 2L) real pairs -> (b, 1, n, L)
        return torch.view_as_complex(M.unflatten(-1, (length, 2)).contiguous())[:, None]

    Bc = as_complex(B) if is_variable_B else B[None, :, :, None]
    Cc = as_complex(C)
    c = delta.cumsum(-1)  # (b, d, L)
    gap = (c[..., :, None] - c[..., None, :])[:, :, None]  # (b, d, 1, t, s)
    causal = torch.ones(length, length).tril().bool()
    weight = torch.where(causal, torch.exp(A.detach()[None, :, :, None, None] * gap), 0)
    drive = (delta * u)[:, :, None, :] * Bc  # (b, d, n, s)
    states = (weight * drive[:, :, :, None, :]).sum(-1)  # (b, d, n, t)
    y = 2 * (states * Cc).sum(2).real + D[:, None] * u
    want = y * torch.nn.functional.silu(z)
    torch.testing.assert_close(out.detach(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.detach(), states[..., -1], rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert A.grad is not None and torch.isfinite(torch.view_as_real(A.grad)).all()


@pytest.mark.parametrize("varBC_groups", [1, 2])
@pytest.mark.parametrize("is_variable_B", [False, True])
def test_last_state_gradient(is_variable_B, varBC_groups):
    """Beyond mamba's file (its CUDA function drops this gradient, its reference keeps it): the
    gradient through the last state alone, selective_scan_fn (the cpu kernel) against
    selective_scan_ref, in every input."""
    if varBC_groups > 1 and not is_variable_B:
        pytest.skip()
    x = scan_inputs(is_variable_B, True, varBC_groups, 64, torch.float32)
    ref = twins(x)
    _, state = run_scan(selective_scan_fn, x, True)
    _, state_ref = run_scan(selective_scan_ref, ref, True)
    g = torch.randn_like(state_ref)
    (state * g).sum().backward()
    (state_ref * g).sum().backward()
    for name, leaf in x.items():  # C, D and z do not reach the state: no gradient in the ref
        want = ref[name].grad if ref[name].grad is not None else torch.zeros_like(leaf)
        torch.testing.assert_close(leaf.grad, want, rtol=1e-4, atol=1e-5)
