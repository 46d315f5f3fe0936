"""``mamba_ssm.ops.selective_scan_interface`` on dimbench's ops: ``selective_scan_fn``,
``selective_scan_ref``, ``mamba_inner_fn`` and ``mamba_inner_ref`` with mamba_ssm's arguments.

``selective_scan_fn`` is ``dimbench.ops.selective_scan`` and ``mamba_inner_fn`` is
``dimbench.ops.mamba_inner_packed``, on the backends of :mod:`dimbench.compat.settings`; the ops
cover mamba_ssm's whole contract (fixed or grouped B/C, any D, complex A, the last state, B/C
projection biases; see their docstrings for which case runs on which backend). One difference
from mamba's CUDA function: the last state (``return_last_state``) is differentiable, as in
mamba's ``selective_scan_ref``.

``selective_scan_ref`` is the plain-PyTorch twin (the ops' sequential reference scan, which
autograd differentiates); ``mamba_inner_ref`` is, as in mamba_ssm, the unfused sequence over
``causal_conv1d_fn`` and ``selective_scan_fn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimbench import ops
from dimbench.compat import settings
from dimbench.compat.causal_conv1d import causal_conv1d_fn
from dimbench.ops import scan_ref
from dimbench.ops.mamba_inner import packed_bc

Tensor = torch.Tensor


def _no_packed_sequences(cu_seqlens) -> None:
    if cu_seqlens is not None:
        raise NotImplementedError("dimbench.compat: packed sequences (cu_seqlens) are not taken")


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
    """The sequential scan in plain PyTorch that autograd differentiates (``dimbench.ops``'s
    reference, :func:`dimbench.ops.scan_ref.selective_scan_ref`); mamba_ssm's shapes: u, delta, z
    (B, D, L); A (D, N) real or complex; B, C (D, N), (B, N, L) or (B, G, N, L) (L doubled into
    real pairs for complex A); D, delta_bias (D,). Returns out (B, D, L) in u's dtype, and the
    last state (B, D, N) when asked."""
    _no_packed_sequences(cu_seqlens)
    return scan_ref.selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )


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
    """mamba_ssm's ``selective_scan_fn``: ``dimbench.ops.selective_scan`` on the layer's scan
    backend. Returns out (B, D, L), and the last state (B, D, N) when ``return_last_state``;
    the last state is differentiable (as in mamba's ``selective_scan_ref``; its CUDA function
    drops that gradient)."""
    _no_packed_sequences(cu_seqlens)
    return ops.selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
        backend=settings.current().scan,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the mixer


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
    """The unfused twin of :func:`mamba_inner_fn`, as mamba_ssm defines it: conv + SiLU ->
    x_proj -> (dt, B, C) -> dt_proj -> scan -> out_proj as separate ops over
    ``causal_conv1d_fn`` and ``selective_scan_fn``, differentiated by autograd."""
    _no_packed_sequences(cu_seqlens if cu_seqlens is not None else seq_idx)
    rank = delta_proj_weight.shape[1]
    complex_a = A.is_complex()
    width = A.shape[-1] * (2 if complex_a else 1)  # x_proj columns per B or C
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_fn(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (B, L, R + ...)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2)  # (B, D, L)
    if B is None:
        B = packed_bc(x_dbl, rank, rank + width, B_proj_bias, complex_a)
    if C is None:
        C = packed_bc(x_dbl, x_dbl.shape[-1] - width, x_dbl.shape[-1], C_proj_bias, complex_a)
    y = selective_scan_fn(
        x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus
    )
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


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
    """mamba_ssm's ``mamba_inner_fn``: ``dimbench.ops.mamba_inner_packed`` (the same arguments)
    on the layer's scan and conv backends. xz (B, 2D, L) in_proj's output, conv1d_weight
    (D, 1, K) -> out_proj(scan(...)) (B, L, d_model). ``checkpoint_lvl`` is moot: the fused node
    recomputes in backward whatever it can."""
    _no_packed_sequences(cu_seqlens if cu_seqlens is not None else seq_idx)
    chosen = settings.current()
    return ops.mamba_inner_packed(
        xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
        out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, delta_softplus,
        scan_backend=chosen.scan, conv_backend=chosen.conv,
    )  # fmt: skip
