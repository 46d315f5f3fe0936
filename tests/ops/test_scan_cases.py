"""selective_scan's whole mamba contract, case by case, against an independent float64 closed
form: the last state, fixed B/C, any dim and group count, complex A, and the dtypes."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dimbench.ops import scan_backends, scan_flops, selective_scan
from dimbench.ops.backends import BackendError

KERNELS = [b for b in scan_backends("cpu") if b != "ref"]


def closed_form(u, delta, A, B, C, D, z, delta_bias, softplus):
    """x_t = sum_{s<=t} exp(S_t - S_s) dt_s u_s B_s with S_t = sum_{r<=t} dt_r A: the scan's
    float64 solution without its loop (O(L^2), small L only). Returns (out, last state)."""
    f = torch.float64
    cplx = A.is_complex()
    batch, dim, length = u.shape
    dt = delta.to(f) + (delta_bias.to(f)[:, None] if delta_bias is not None else 0)
    dt = torch.nn.functional.softplus(dt) if softplus else dt

    def per_channel(M):  # -> (batch, dim, N, L)
        if cplx and not M.is_complex() and M.dim() >= 3:
            M = torch.view_as_complex(M.to(f).unflatten(-1, (-1, 2)).contiguous())
        M = M.to(torch.complex128 if cplx else f)
        if M.dim() == 2:
            return M[None, :, :, None].expand(batch, -1, -1, length)
        if M.dim() == 3:
            return M[:, None].expand(-1, dim, -1, -1)
        return M.repeat_interleave(dim // M.shape[1], dim=1)

    Ax = A.to(torch.complex128 if cplx else f)
    S = torch.cumsum(dt[:, :, None, :] * Ax[None, :, :, None], dim=-1)  # (b, d, N, L)
    drive = dt[:, :, None, :] * u.to(f)[:, :, None, :] * per_channel(B)
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [t, s]: s <= t
    decay = torch.exp(S[..., :, None] - S[..., None, :]) * causal
    x = (decay * drive[..., None, :]).sum(-1)  # (b, d, N, L)
    y = (x * per_channel(C)).sum(2)
    y = 2 * y.real if cplx else y
    if D is not None:
        y = y + u.to(f) * D.to(f)[:, None]
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(f))
    return y, x[..., -1]


def make(
    batch=2, dim=20, length=19, n=6, groups=None, fixed=(False, False), cplx=False, pairs=True
):
    """Inputs (u, delta, A, B, C, D, z, delta_bias) of one case, float64 (B, C complex or real
    pairs for a complex A)."""
    g = torch.Generator().manual_seed(dim * 31 + length)
    f = torch.float64

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=f)

    u, z = r(batch, dim, length), r(batch, dim, length)
    delta = 0.5 * torch.rand(batch, dim, length, generator=g, dtype=f)
    A = -0.2 - torch.rand(dim, n, generator=g, dtype=f)
    if cplx:
        A = torch.complex(A, 3 * r(dim, n))

    def bc(is_fixed):
        if is_fixed:
            return torch.complex(r(dim, n), r(dim, n)) if cplx else r(dim, n)
        shape = (batch, n, length) if groups is None else (batch, groups, n, length)
        if cplx and pairs:
            return r(*shape[:-1], 2 * length)
        return torch.complex(r(*shape), r(*shape)) if cplx else r(*shape)

    return [u, delta, A, bc(fixed[0]), bc(fixed[1]), r(dim), z, 0.1 * r(dim)]


def run(inputs, backend, dtype, last=True):
    """Output, last state and every input's gradient of one scan with ``inputs`` cast to
    ``dtype`` (complex ones to its complex twin), for fixed random output gradients."""

    def cast(t):
        if t.is_complex():
            return t.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
        return t.to(dtype)

    leaves = [cast(t).requires_grad_() for t in inputs]
    u, delta, A, B, C, D, z, bias = leaves
    res = selective_scan(u, delta, A, B, C, D, z, bias, True, return_last_state=last,
                         backend=backend)  # fmt: skip
    out, state = res if last else (res, None)
    g = torch.Generator().manual_seed(7)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    loss = (out.double() * gout).sum()
    if last:
        gstate = torch.randn(state.shape, generator=g, dtype=torch.complex128)
        gstate = gstate if state.is_complex() else gstate.real
        loss = loss + (state.to(gstate.dtype) * gstate.conj()).real.sum()
    loss.backward()
    return out, state, [t.grad for t in leaves], leaves


def run_closed(inputs, last):
    """The closed form's output, last state and gradients (float64), for run's gradients."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out, state = closed_form(*leaves, True)
    g = torch.Generator().manual_seed(7)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    loss = (out * gout).sum()
    if last:
        gstate = torch.randn(state.shape, generator=g, dtype=torch.complex128)
        gstate = gstate if state.is_complex() else gstate.real
        loss = loss + (state * gstate.conj()).real.sum()
    loss.backward()
    return out, state, [t.grad for t in leaves], leaves


def rel_err(actual, ref) -> float:
    return ((actual.to(ref.dtype) - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


NAMES = "u delta A B C D z delta_bias".split()


def check(inputs, backend, dtype, tol, last=True):
    out, state, grads, leaves = run(inputs, backend, dtype, last)
    # the closed form of the inputs the scan saw (rounded to dtype), in float64
    seen = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in leaves]
    ref_out, ref_state, ref_grads, _ = run_closed(seen, last)
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert rel_err(out, ref_out) < tol, ("out", rel_err(out, ref_out))
    if last:
        assert state.shape == ref_state.shape
        assert rel_err(state, ref_state) < tol, ("last state", rel_err(state, ref_state))
    for name, got, want, leaf in zip(NAMES, grads, ref_grads, leaves, strict=True):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, name
        assert rel_err(got, want) < tol, (name, rel_err(got, want))


CASES = {
    "aligned": {"dim": 32},
    "tail lanes": {"dim": 20},
    "groups 2 of dim 4 (mamba's test)": {"dim": 4, "groups": 2},
    "groups 5 of 8": {"dim": 40, "groups": 5},
    "groups 2 of 16": {"dim": 32, "groups": 2},
    "fixed B": {"fixed": (True, False)},
    "fixed C": {"fixed": (False, True)},
    "fixed B and C, tail": {"dim": 33, "fixed": (True, True)},
    "fixed B, grouped C": {"dim": 12, "groups": 3, "fixed": (True, False)},
    "two chunks, N = 16": {"batch": 1, "dim": 18, "length": 140, "n": 16},
    "two chunks, fixed C": {"batch": 1, "dim": 18, "length": 140, "n": 16, "fixed": (False, True)},
}


@pytest.mark.parametrize("backend", ["ref", *KERNELS])
@pytest.mark.parametrize("case", CASES)
def test_real_cases_match_the_closed_form(backend, case):
    inputs = make(**CASES[case])
    dtype, tol = (torch.float64, 1e-10) if backend == "ref" else (torch.float32, 2e-5)
    check(inputs, backend, dtype, tol)


@pytest.mark.parametrize("backend", KERNELS)
def test_without_the_last_state(backend):
    check(make(dim=20, groups=4), backend, torch.float32, 2e-5, last=False)


COMPLEX = {
    "real-pair B, C": {},
    "complex B, C": {"pairs": False},
    "grouped real pairs": {"dim": 8, "groups": 2},
    "fixed B and C": {"fixed": (True, True)},
    "fixed B": {"fixed": (True, False)},
}


@pytest.mark.parametrize("case", COMPLEX)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_complex_A_on_auto_matches_the_closed_form(case, dtype):
    inputs = make(length=11, cplx=True, **COMPLEX[case])
    check(inputs, "auto", dtype, 1e-10 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("backend", KERNELS)
def test_a_kernel_named_for_complex_A_says_so(backend):
    u, delta, A, B, C, *_ = make(cplx=True)
    with pytest.raises(BackendError, match="complex"):
        selective_scan(u, delta, A, B, C, backend=backend)


@pytest.mark.parametrize("backend", ["ref", *KERNELS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_outputs_and_grads_in_their_dtypes(backend, dtype):
    inputs = make(dim=20, groups=2, fixed=(False, False))
    check(inputs, backend, dtype, 3e-2)


def test_auto_picks_the_kernel_for_fixed_bc_and_the_last_state():
    if not KERNELS:
        pytest.skip("no cpu kernel here")
    from dimbench.ops import scan

    u, delta, A, B, C, *_ = make(fixed=(True, True))
    needed = scan.features_of(A, B, C, True)
    assert scan.resolve("auto", "cpu", u.dtype, needed) == KERNELS[0]


def test_flops_of_the_new_cases():
    u, delta, A, B, C, D, z, bias = (t.float() for t in make(dim=8, length=5, n=4))
    Af = torch.complex(A, A)
    Bp, Cp = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    real = scan_flops(u.shape, A.shape, False, False, False, False)
    assert real == 9 * 2 * 8 * 5 * 4
    assert scan_flops(u.shape, A.shape, False, False, False, False, complex_A=True) == 4 * real
    for A_, B_, C_, want in ((A, A, A, real), (Af, Bp, Cp, 4 * real)):
        with FlopCounterMode(display=False) as counter:
            selective_scan(u, delta, A_, B_, C_, return_last_state=True, backend="ref")
        assert counter.get_total_flops() == want
