"""``mamba_ssm.ops.selective_scan_interface`` on dimbench's kernels: ``selective_scan_fn``,
``selective_scan_ref``, ``mamba_inner_fn`` and ``mamba_inner_ref`` with mamba_ssm's arguments.

``selective_scan_fn`` runs ``dimbench.ops.selective_scan`` on the backend of
:mod:`dimbench.compat.settings`; ``mamba_inner_fn`` runs ``dimbench.ops.mamba_inner`` (the fused
node) for Mamba-1's usual call (input-dependent B and C, no B/C projection biases, real A).
The ops are growing the rest of mamba_ssm's contract (issue 24). Until they have it, the layer
asks them first and adapts only what they refuse, each adaptation marked FALLBACK:
- B or C fixed ((D, N)): passed as per-channel groups, (B, D, N, L) broadcast views;
- a layout the ``cpu`` scan kernel refuses (dim / groups not a multiple of its lanes, unequal
  B and C groups) under ``auto``: the ``ref`` backend;
- ``return_last_state``: the output from the op, the last state (not differentiated, as in
  mamba_ssm) from a closed form in float64: x_L = sum_t exp(A * sum_{s > t} dt_s) dt_t B_t u_t;
- complex A: :func:`selective_scan_ref`;
- ``mamba_inner_fn`` with fixed B/C, B/C projection biases or complex A: the unfused sequence
  over this layer's conv and scan.

``selective_scan_ref`` is the plain-PyTorch twin (a sequential scan that autograd
differentiates); ``mamba_inner_ref`` is, as in mamba_ssm, the unfused sequence over
``causal_conv1d_fn`` and ``selective_scan_fn`` (so where ``mamba_inner_fn`` falls back to that
sequence the two are one computation).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from dimbench import ops
from dimbench.compat import settings
from dimbench.compat.causal_conv1d import causal_conv1d_fn
from dimbench.ops import mamba_inner as inner_ops

Tensor = torch.Tensor

LAST_STATE_CHUNK = 256  # time steps per slice of the closed-form last state (bounds its memory)


def _no_packed_sequences(cu_seqlens) -> None:
    if cu_seqlens is not None:
        raise NotImplementedError("dimbench.compat: packed sequences (cu_seqlens) are not taken")


def _per_channel(M: Tensor, dim: int, length: int, complex_a: bool) -> Tensor:
    """B or C as a (batch or 1, dim or 1, N, L) tensor that broadcasts against the state:
    fixed (D, N), time-varying (B, N, L) or grouped (B, G, N, L); with complex A a time-varying
    one holds real pairs, (..., 2L)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(-1, -1, -1, length)
    if complex_a:
        M = torch.view_as_complex(M.float().unflatten(-1, (length, 2)).contiguous())
    else:
        M = M.float()
    if M.dim() == 3:
        return M[:, None]
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential selective scan in float32 (complex64 for complex A), differentiated by
    autograd; mamba_ssm's shapes: u, delta, z (B, D, L); A (D, N) real or complex; B, C (D, N),
    (B, N, L) or (B, G, N, L) (L doubled into real pairs for complex A); D, delta_bias (D,).
    Returns out (B, D, L) in u's dtype, and the last state (B, D, N) when asked."""
    _no_packed_sequences(cu_seqlens)
    batch, dim, length = u.shape
    complex_a = A.is_complex()
    uf, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bx = _per_channel(B, dim, length, complex_a)
    Cx = _per_channel(C, dim, length, complex_a)
    decay = torch.exp(dt[:, :, None, :] * A[None, :, :, None])  # (B, D, N, L)
    drive = (dt * uf)[:, :, None, :] * Bx
    x = decay.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        x = decay[..., t] * x + drive[..., t]
        y = (x * Cx[..., t]).sum(-1)
        ys.append(2 * y.real if complex_a else y)  # a complex state stands for a conjugate pair
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(u.dtype)
    return (out, x) if return_last_state else out


@functools.cache
def _ops_take_last_state() -> bool:
    return "return_last_state" in inspect.signature(ops.selective_scan).parameters


def _fixed_as_groups(M: Tensor, u: Tensor) -> Tensor:
    """FALLBACK: a fixed (D, N) B or C as D groups, a (B, D, N, L) view (no copy)."""
    if M.dim() != 2:
        return M
    batch, dim, length = u.shape
    return M[None, :, :, None].expand(batch, dim, M.shape[1], length)


def _ops_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    backend = settings.current().scan
    extra = {"return_last_state": True} if return_last_state else {}

    def scan(B_, C_, name):
        return ops.selective_scan(
            u, delta, A, B_, C_, D, z, delta_bias, delta_softplus, backend=name, **extra
        )

    # what the ops refuse today, adapted step by step: fixed B/C as groups, then (auto only)
    # the ref backend for a layout the cpu kernel does not take
    Bg, Cg = _fixed_as_groups(B, u), _fixed_as_groups(C, u)
    attempts = [(B, C, backend)]
    if Bg is not B or Cg is not C:
        attempts.append((Bg, Cg, backend))
    if backend == "auto":
        attempts.append((Bg, Cg, "ref"))
    refused = None
    for B_, C_, name in attempts:
        try:
            return scan(B_, C_, name)
        except ValueError as e:
            refused = refused or e
    raise refused


@torch.no_grad()
def _last_state(u, delta, A, B, delta_bias, delta_softplus) -> Tensor:
    """FALLBACK: the state after the last step, (B, D, N) in A's dtype, in closed form."""
    batch, dim, length = u.shape
    dt = delta.double()
    if delta_bias is not None:
        dt = dt + delta_bias.double()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    later = dt.flip(-1).cumsum(-1).flip(-1) - dt  # sum of dt over the steps after t
    drive = (dt * u.double())[:, :, None, :]
    Bx = _per_channel(B, dim, length, False).double()
    A64 = A.double()[None, :, :, None]
    state = u.new_zeros(batch, dim, A.shape[1], dtype=torch.float64)
    for s in range(0, length, LAST_STATE_CHUNK):
        t = slice(s, s + LAST_STATE_CHUNK)
        state += (torch.exp(later[:, :, None, t] * A64) * drive[..., t] * Bx[..., t]).sum(-1)
    return state.to(A.dtype)


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm's ``selective_scan_fn`` on ``dimbench.ops.selective_scan`` (see the module
    docstring for what runs where). Returns out (B, D, L), and the last state (B, D, N) when
    ``return_last_state``; the last state gets no gradient, as in mamba_ssm."""
    _no_packed_sequences(cu_seqlens)
    if A.is_complex():  # FALLBACK: the ops scan real A only
        return selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    if return_last_state and _ops_take_last_state():
        out, state = _ops_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
        return out, state.detach()
    out = _ops_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, False)
    if not return_last_state:
        return out
    return out, _last_state(u, delta, A, B, delta_bias, delta_softplus)


# ----------------------------------------------------------------------------- the mixer


def _inner_sequence(
    conv, scan, xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
    out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias,
    delta_softplus,
):  # fmt: skip
    """conv + SiLU -> x_proj -> (dt, B, C) -> dt_proj -> scan -> out_proj, unfused, with the
    given conv and scan (mamba_ssm's ``mamba_inner_ref`` sequence)."""
    batch, _, length = xz.shape
    rank = delta_proj_weight.shape[1]
    complex_a = A.is_complex()
    width = A.shape[-1] * (2 if complex_a else 1)  # x_proj columns per B or C
    x, z = xz.chunk(2, dim=1)
    x = conv(x, conv1d_weight[:, 0], conv1d_bias, "silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, R + ...)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2)  # (B, D, L)

    def from_x_dbl(cols: slice, bias: Tensor | None) -> Tensor:
        M = x_dbl[..., cols]
        if bias is not None:
            M = M + bias.to(M.dtype)
        if complex_a:  # columns (N, 2) -> real pairs along time: (B, N, 2L)
            return M.unflatten(-1, (-1, 2)).permute(0, 2, 1, 3).reshape(batch, -1, 2 * length)
        return M.transpose(1, 2).contiguous()  # (B, N, L)

    if B is None:
        B = from_x_dbl(slice(rank, rank + width), B_proj_bias)
    if C is None:
        C = from_x_dbl(slice(x_dbl.shape[-1] - width, None), C_proj_bias)
    y = scan(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _conv_layer(x, weight, bias, activation):
    return causal_conv1d_fn(x, weight, bias, activation=activation)


def mamba_inner_ref(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    B: Tensor | None = None,
    C: Tensor | None = None,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    B_proj_bias: Tensor | None = None,
    C_proj_bias: Tensor | None = None,
    delta_softplus: bool = True,
    cu_seqlens: Tensor | None = None,
    seq_idx: Tensor | None = None,
) -> Tensor:
    """The unfused twin of :func:`mamba_inner_fn`, as mamba_ssm defines it: the sequence of
    separate ops over ``causal_conv1d_fn`` and ``selective_scan_fn``, differentiated by
    autograd."""
    _no_packed_sequences(cu_seqlens if cu_seqlens is not None else seq_idx)
    return _inner_sequence(
        _conv_layer, selective_scan_fn, xz, conv1d_weight, conv1d_bias, x_proj_weight,
        delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias, B_proj_bias,
        C_proj_bias, delta_softplus,
    )  # fmt: skip


def mamba_inner_fn(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    B: Tensor | None = None,
    C: Tensor | None = None,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    B_proj_bias: Tensor | None = None,
    C_proj_bias: Tensor | None = None,
    delta_softplus: bool = True,
    cu_seqlens: Tensor | None = None,
    seq_idx: Tensor | None = None,
    checkpoint_lvl: int = 1,
) -> Tensor:
    """mamba_ssm's ``mamba_inner_fn``: xz (B, 2D, L) in_proj's output, conv1d_weight (D, 1, K)
    -> out_proj(scan(...)) (B, L, d_model). The usual Mamba-1 call runs ``dimbench.ops``'s
    fused node on CPU tensors (its twin elsewhere: on the meta device it counts FLOPs);
    ``checkpoint_lvl`` is moot: the node recomputes in backward whatever it can."""
    _no_packed_sequences(cu_seqlens if cu_seqlens is not None else seq_idx)
    fused = B is None and C is None and B_proj_bias is None and C_proj_bias is None
    if not fused or A.is_complex():  # FALLBACK: the unfused sequence over this layer's ops
        return _inner_sequence(
            _conv_layer, selective_scan_fn, xz, conv1d_weight, conv1d_bias, x_proj_weight,
            delta_proj_weight, out_proj_weight, out_proj_bias, A, B, C, D, delta_bias,
            B_proj_bias, C_proj_bias, delta_softplus,
        )  # fmt: skip
    chosen = settings.current()
    x, z = xz.chunk(2, dim=1)
    # the fused node on CPU tensors, its twin elsewhere (meta: FLOP counts), as MambaMixer does
    node = inner_ops.mamba_inner if xz.device.type == "cpu" else inner_ops.mamba_inner_ref
    out = node(
        x,
        z,
        conv1d_weight[:, 0],
        conv1d_bias,
        x_proj_weight,
        delta_proj_weight,
        out_proj_weight,
        A,
        D,
        delta_bias,
        delta_softplus=delta_softplus,
        scan_backend=chosen.scan,
        conv_backend=chosen.conv,
    )
    return out if out_proj_bias is None else out + out_proj_bias.to(out.dtype)
