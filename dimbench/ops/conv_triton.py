"""The "triton" causal depthwise conv1d backend: one fused kernel for conv + bias + SiLU.

Forward: out_t = act(bias + sum_k w_k x_{t-K+1+k}), read once, written once (torch's route pads
a copy of x, convolves, then applies SiLU: four passes over the activations). Backward: one
kernel recomputes the pre-activation at t..t+K-1 from x (nothing but x is saved), forms
g_s = dout_s * silu'(pre_s) and writes dx_t = sum_j w_{K-1-j} g_{t+j}; the weight and bias
gradients are per-(batch, time-tile) partial sums the wrapper adds up (deterministic).

Exposed as the custom op ``dimbench::causal_conv1d`` (fake implementation, autograd and a FLOP
formula: 2*B*D*L*K forward as torch counts a conv, twice that backward). The reference twin is
``dimbench.ops.conv.causal_conv1d_ref``. Importing this module imports triton: conv.py does it
only when the backend is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dimbench.ops.conv_autograd import register_conv_op
from dimbench.ops.triton_math import sigmoid

Tensor = torch.Tensor

BLOCK_D = 16
BLOCK_T = 128
NUM_WARPS = 4


@triton.jit
def _preact(
    x_ptr,
    w_ptr,
    rows,
    offs_d,
    mask_d,
    s,
    length,
    bias,
    K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """bias + sum_k w[:, k] x[:, s - K + 1 + k] for a (BLOCK_D, BLOCK_T) tile of positions s."""
    acc = bias[:, None] + tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
        src = s - (K - 1) + k
        ok = mask_d[:, None] & ((src >= 0) & (src < length))[None, :]
        xv = tl.load(x_ptr + rows + src[None, :], mask=ok, other=0.0).to(tl.float32)
        acc += w[:, None] * xv
    return acc


@triton.jit
def conv_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    dim,
    length,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    rows = pid_b * dim * length + offs_d[:, None] * length
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc = _preact(x_ptr, w_ptr, rows, offs_d, mask_d, offs_t, length, bias, K, BLOCK_D, BLOCK_T)
    if SILU:
        acc = acc * sigmoid(acc)
    mask = mask_d[:, None] & (offs_t < length)[None, :]
    tl.store(out_ptr + rows + offs_t[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_bwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    gout_ptr,
    gx_ptr,
    gw_ptr,  # (batch * n_tblocks, dim, K) float32 partial sums
    gb_ptr,  # (batch * n_tblocks, dim) float32 partial sums
    dim,
    length,
    n_tblocks,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    rows = pid_b * dim * length + offs_d[:, None] * length
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    part = (pid_b * n_tblocks + pid_t) * dim + offs_d
    gx = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    for j in tl.static_range(K):
        s = offs_t + j  # dx_t collects g_{t+j} through w_{K-1-j}
        ok = mask_d[:, None] & (s < length)[None, :]
        g = tl.load(gout_ptr + rows + s[None, :], mask=ok, other=0.0).to(tl.float32)
        if SILU:
            pre = _preact(x_ptr, w_ptr, rows, offs_d, mask_d, s, length, bias, K, BLOCK_D, BLOCK_T)
            sig = sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        w = tl.load(w_ptr + offs_d * K + (K - 1 - j), mask=mask_d, other=0.0).to(tl.float32)
        gx += w[:, None] * g
        if j == 0:  # this tile's own positions: the weight and bias gradients
            if HAS_BIAS:
                tl.store(gb_ptr + part, tl.sum(g, axis=1), mask=mask_d)
            for k in tl.static_range(K):
                src = offs_t - (K - 1) + k
                okx = mask_d[:, None] & ((src >= 0) & (src < length))[None, :]
                xv = tl.load(x_ptr + rows + src[None, :], mask=okx, other=0.0).to(tl.float32)
                tl.store(gw_ptr + part * K + k, tl.sum(g * xv, axis=1), mask=mask_d)
    mask = mask_d[:, None] & (offs_t < length)[None, :]
    tl.store(gx_ptr + rows + offs_t[None, :], gx.to(gx_ptr.dtype.element_ty), mask=mask)


def _grid(batch: int, dim: int, length: int) -> tuple[int, int, int]:
    return (batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(length, BLOCK_T))


@torch.library.custom_op("dimbench::causal_conv1d", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    x, weight = x.contiguous(), weight.contiguous()
    batch, dim, length = x.shape
    out = torch.empty_like(x)
    if x.numel():
        conv_fwd_kernel[_grid(batch, dim, length)](
            x,
            weight,
            bias.contiguous() if bias is not None else weight,
            out,
            dim,
            length,
            K=weight.shape[1],
            HAS_BIAS=bias is not None,
            SILU=silu,
            BLOCK_D=BLOCK_D,
            BLOCK_T=BLOCK_T,
            num_warps=NUM_WARPS,
        )
    return out


@_conv_op.register_fake
def _(x, weight, bias, silu):
    return torch.empty_like(x)


@torch.library.custom_op("dimbench::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> list[Tensor]:
    x, weight, grad_out = x.contiguous(), weight.contiguous(), grad_out.contiguous()
    batch, dim, length = x.shape
    width = weight.shape[1]
    n_tblocks = triton.cdiv(length, BLOCK_T)
    f32 = {"dtype": torch.float32, "device": x.device}
    gx = torch.empty_like(x)
    gw = torch.zeros((batch * n_tblocks, dim, width), **f32)
    gb = torch.zeros((batch * n_tblocks, dim), **f32)
    if x.numel():
        conv_bwd_kernel[_grid(batch, dim, length)](
            x,
            weight,
            bias.contiguous() if bias is not None else weight,
            grad_out,
            gx,
            gw,
            gb,
            dim,
            length,
            n_tblocks,
            K=width,
            HAS_BIAS=bias is not None,
            SILU=silu,
            BLOCK_D=BLOCK_D,
            BLOCK_T=BLOCK_T,
            num_warps=NUM_WARPS,
        )
    gbias = gb.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return [gx, gw.sum(0).to(weight.dtype), gbias]


@_conv_bwd_op.register_fake
def _(grad_out, x, weight, bias, silu):
    gbias = torch.empty_like(bias) if bias is not None else x.new_empty(0)
    return [torch.empty_like(x), torch.empty_like(weight), gbias]


register_conv_op(_conv_op, _conv_bwd_op, "causal_conv1d")


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Fused causal depthwise conv1d (+ SiLU); x (B, D, L) on CUDA (or CPU when interpreting)."""
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    return _conv_op(x, weight, bias, activation == "silu")
