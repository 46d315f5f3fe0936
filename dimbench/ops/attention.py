"""Multi-head attention with interchangeable backends and FLOP formulas that count on every one.

``attention(q, k, v, backend="auto")``: q (B, H, Lq, Dh), k/v (B, H, Lk, Dh) -> (B, H, Lq, Dh),
non-causal, softmax scale 1/sqrt(Dh).

Backends: ``math`` (explicit softmax(QK^T)V), ``sdpa`` (torch's fused
scaled_dot_product_attention), ``flash_attn`` (flash-attn 2, CUDA, fp16/bf16, when importable).

FLOPs (2 per multiply-add): forward 4*B*H*Lq*Lk*Dh (QK^T and PV); backward twice that (the four
matmuls of the gradient; a fused kernel's recomputation of QK^T is not counted, so every backend
reports the same work). torch counts CPU SDPA as 0; the formulas below fix that.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from dimbench.dtypes import HALF
from dimbench.ops import backends

Tensor = torch.Tensor
aten = torch.ops.aten


def attention_flops(q_shape, k_shape, v_shape) -> int:
    """Forward FLOPs of attention for q (B, H, Lq, Dh), k (B, Hk, Lk, Dh), v (B, Hk, Lk, Dv)."""
    b, h, lq, dq = q_shape
    lk, dv = k_shape[2], v_shape[3]
    return 2 * b * h * lq * lk * dq + 2 * b * h * lq * lk * dv


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flop(q, k, v, *args, **kwargs) -> int:
    return attention_flops(q, k, v)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_cpu_bwd_flop(grad_out, q, k, v, *args, **kwargs) -> int:
    return 2 * attention_flops(q, k, v)


def _fused_bwd_flop(grad_out, q, k, v, *args, **kwargs) -> int:
    return 2 * attention_flops(q, k, v)


# torch counts the CUDA fused backward kernels with their recomputation (2.5x forward);
# dimbench's counter maps them to the same 2x as the other backends.
FUSED_BACKWARD_OPS = (
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
)
FLOP_OVERRIDES = {op: _fused_bwd_flop for op in FUSED_BACKWARD_OPS}


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except Exception:  # ImportError, or a CUDA-less build failing at import
        return None
    _register_flash_attn_flops()
    return flash_attn_func


def _register_flash_attn_flops() -> None:
    """flash-attn >= 2.6 wraps its kernels in torch ops; teach the FLOP counter about them."""
    ns = getattr(torch.ops, "flash_attn", None)
    for name, mult in (("_flash_attn_forward", 1), ("_flash_attn_backward", 2)):
        op = getattr(ns, name, None) if ns is not None else None
        if op is None:
            continue

        def formula(*args, _mult=mult, _bwd=mult == 2, **kwargs):
            q, k, v = args[1:4] if _bwd else args[:3]  # (B, L, H, Dh) layout
            return _mult * attention_flops(
                (q[0], q[2], q[1], q[3]), (k[0], k[2], k[1], k[3]), (v[0], v[2], v[1], v[3])
            )

        try:
            register_flop_formula(op)(formula)
        except RuntimeError:  # already registered
            pass


def _math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.softmax(dim=-1)
    return attn @ v


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _flash(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    fn = _flash_attn_func()
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0)
    return out.transpose(1, 2)


def attention_backends(device: str | torch.device | None = None) -> list[str]:
    """Attention backends usable here (for ``device``'s type when given), fastest first."""
    return backends.available("attention", device)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """Non-causal multi-head attention, q/k/v (B, H, L, Dh) -> (B, H, Lq, Dh)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention expects q, k, v of shape (batch, heads, length, head_dim)")
    name = backends.resolve("attention", backend, q.device, q.dtype)
    return backends.get("attention", name).run(q, k, v)


ANY = ("cpu", "cuda", backends.META)
backends.register(backends.Backend(op="attention", name="math", device_types=ANY, run=_math))
backends.register(
    backends.Backend(op="attention", name="sdpa", device_types=ANY, priority=10, run=_sdpa)
)
backends.register(
    backends.Backend(
        op="attention",
        name="flash_attn",
        device_types=("cuda",),
        priority=20,
        dtypes=HALF,  # auto's choice for CUDA half-precision inputs where flash-attn is installed
        probe=backends.cuda_package_probe(_flash_attn_func, "flash-attn"),
        run=_flash,
    )
)
