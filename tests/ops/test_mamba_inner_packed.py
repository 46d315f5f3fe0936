"""mamba_inner_packed (mamba_ssm's mamba_inner_fn arguments) against a plain float64 sequence:
F.conv1d, F.linear and the reference scan, outputs and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from dimbench.ops import mamba_inner_packed, scan_backends
from dimbench.ops.scan_ref import selective_scan_ref

DIM, RANK, K, D_MODEL = 20, 3, 4, 12


def plain(xz, conv_w, conv_b, xproj_w, dt_w, out_w, out_b, A, B, C, D, dbias, Bb, Cb):
    """mamba's MambaInnerFn forward written out with torch ops (no fused node)."""
    x, z = xz.chunk(2, dim=1)
    length = x.shape[-1]
    u = F.silu(F.conv1d(x, conv_w, conv_b, padding=K - 1, groups=DIM)[..., :length])
    x_dbl = F.linear(u.transpose(1, 2), xproj_w)  # (B, L, R + 2N')
    dt = F.linear(x_dbl[..., :RANK], dt_w).transpose(1, 2)
    n = A.shape[1] * (2 if A.is_complex() else 1)

    def from_proj(cols, bias):
        M = cols if bias is None else cols + bias
        if not A.is_complex():
            return M.transpose(1, 2)
        b, ln = M.shape[:2]  # "(b l) (n two) -> b n (l two)"
        return M.reshape(b, ln, -1, 2).permute(0, 2, 1, 3).reshape(b, -1, 2 * ln)

    B = from_proj(x_dbl[..., RANK : RANK + n], Bb) if B is None else B
    C = from_proj(x_dbl[..., -n:], Cb) if C is None else C
    y = selective_scan_ref(u, dt, A, B, C, D, z, dbias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_w, out_b)


def inputs(case):
    g = torch.Generator().manual_seed(3)
    f = torch.float64

    def r(*shape, s=1.0):
        return s * torch.randn(*shape, generator=g, dtype=f)

    n = 4
    cplx = case == "complex A"
    A = -0.5 - torch.rand(DIM, n, generator=g, dtype=f)
    if cplx:
        A = torch.complex(A, r(DIM, n))
    cols = n * (2 if cplx else 1)
    fixed = torch.complex(r(DIM, n), r(DIM, n)) if cplx else r(DIM, n)
    return {
        "xz": r(2, 2 * DIM, 13),
        "conv_w": r(DIM, 1, K, s=0.5),
        "conv_b": r(DIM, s=0.1),
        "xproj_w": r(RANK + 2 * cols, DIM, s=0.3),
        "dt_w": r(DIM, RANK, s=0.3),
        "out_w": r(D_MODEL, DIM, s=0.3),
        "out_b": r(D_MODEL) if case != "no biases" else None,
        "A": A,
        "B": fixed if case == "fixed B" else None,
        "C": fixed.clone() if case in ("fixed C", "complex A") else None,
        "D": r(DIM),
        "dbias": r(DIM, s=0.1),
        "Bb": r(cols, s=0.1) if case == "projection biases" else None,
        "Cb": r(cols, s=0.1) if case == "projection biases" else None,
    }


def grads_of(fn, args):
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in args.items()}
    out = fn(leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * g).sum().backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


CASES = ["fused node", "no biases", "projection biases", "fixed B", "fixed C", "complex A"]


@pytest.mark.parametrize("scan_backend", scan_backends("cpu"))
@pytest.mark.parametrize("case", CASES)
def test_packed_form_matches_the_plain_sequence(case, scan_backend):
    if case == "complex A" and scan_backend != "ref":
        pytest.skip("complex A runs on ref only (test_scan_cases checks that auto picks it)")
    args = inputs(case)
    got, got_grads = grads_of(
        lambda a: mamba_inner_packed(
            *(a[k] for k in "xz conv_w conv_b xproj_w dt_w out_w out_b A B C D dbias".split()),
            B_proj_bias=a["Bb"],
            C_proj_bias=a["Cb"],
            scan_backend=scan_backend,
            conv_backend="torch",
        ),
        args,
    )
    want, want_grads = grads_of(lambda a: plain(*a.values()), args)
    # the cpu kernel computes in float32; the fused node sums weight gradients in float32
    tol = 1e-7 if scan_backend == "ref" else 2e-5

    def close(a, b, what):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < tol, f"{what}: relative error {err:.3g}"

    close(got, want, "output")
    assert got_grads.keys() == want_grads.keys()
    for k in want_grads:
        close(got_grads[k], want_grads[k], k)


def test_packed_form_checks_its_shapes():
    args = inputs("fused node")
    with pytest.raises(ValueError, match="conv1d_weight"):
        mamba_inner_packed(
            args["xz"],
            args["conv_w"][:, 0],
            *(args[k] for k in "conv_b xproj_w dt_w out_w out_b A".split()),
        )
