"""The "cpu" causal depthwise conv1d backend: a vectorised C++ kernel (csrc/causal_conv1d.cpp).

One pass forward: reads x once and writes act(conv(x) + bias) once, fp32 or bf16 activations
with fp32 weights and accumulation (torch's route pads a copy of x, convolves, then applies
SiLU). The backward saves nothing but x: it recomputes the pre-activation and writes dx, with
each channel's weight and bias gradient summed by one thread in a fixed order (deterministic).

Exposed as the custom ops ``dimbench::causal_conv1d_cpu`` and ``dimbench::causal_conv1d_cpu_bwd``
(fake implementations, autograd, FLOP formulas: 2*B*D*L*K forward as torch counts a conv, twice
that backward). Built and threaded by ``ops/cbuild.py``; the reference twin is
``dimbench.ops.conv.causal_conv1d_ref``.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch.utils.flop_counter import register_flop_formula

from dimbench.ops import cbuild

SOURCE = Path(__file__).parent / "csrc" / "causal_conv1d.cpp"
DTYPES = (torch.float32, torch.bfloat16)  # activation dtypes the kernel reads and writes
MIN_CHANNELS_PER_THREAD = 8  # a unit is one channel over the batch

Tensor = torch.Tensor


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(cbuild.build(SOURCE)))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    head = [i64, i64, i64, i32, ptr, i64, i64, ptr, ptr, i32]
    lib.dimbench_conv_fwd.argtypes = head + [ptr, i64, i64, i64, i64]
    lib.dimbench_conv_fwd.restype = None
    lib.dimbench_conv_bwd.argtypes = head + [ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, i64]
    lib.dimbench_conv_bwd.restype = None
    return lib


# Probed once, kept in a plain dict: torch.compile reads it as a constant where it would trace
# into a functools.cache wrapper (and the compiler check behind it) and break the graph.
_PROBE: dict[str, str | int | None] = {}


def unavailable_reason() -> str | None:
    """None when the kernel is built (or builds now) and loads, else why not."""
    if "reason" not in _PROBE:
        try:
            _PROBE["max_width"] = _lib().dimbench_conv_max_width()
            _PROBE["reason"] = None
        except (cbuild.KernelUnavailable, OSError) as e:
            _PROBE["reason"] = str(e).splitlines()[0]
    return _PROBE["reason"]


def max_width() -> int:
    if unavailable_reason() is not None:
        raise RuntimeError(f"the cpu conv kernel is unavailable ({unavailable_reason()})")
    return _PROBE["max_width"]


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether the kernel takes these tensors (auto falls back to torch otherwise)."""
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPES
        and unavailable_reason() is None
        and 1 <= weight.shape[1] <= max_width()
    )


def _rows(t: Tensor) -> Tensor:
    """t with its time axis contiguous (batch and channel strides are the kernel's arguments)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(x: Tensor, weight: Tensor) -> None:
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        raise ValueError(
            f"the cpu conv kernel takes float32 or bfloat16 CPU tensors, got {x.dtype} on "
            f"{x.device.type}"
        )
    if not 1 <= weight.shape[1] <= max_width():
        raise ValueError(f"the cpu conv kernel supports widths 1..{max_width()}")


def _channel_ranges(dim: int) -> list[tuple[int, int]]:
    return cbuild.ranges(dim, MIN_CHANNELS_PER_THREAD)


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, out: Tensor) -> None:
    """act(conv(x) + bias) into ``out`` ((B, D, L), x's dtype, time contiguous)."""
    _check(x, weight)
    batch, dim, length = x.shape
    if x.numel() == 0:
        return
    x = _rows(x)
    w, b = _f32(weight), _f32(bias)
    head = [batch, length, w.shape[1], int(x.dtype == torch.bfloat16), x.data_ptr()]
    head += [x.stride(0), x.stride(1), w.data_ptr(), _ptr(b), int(silu)]
    tail = [out.data_ptr(), out.stride(0), out.stride(1)]
    cbuild.run(
        _lib().dimbench_conv_fwd, _channel_ranges(dim), lambda i, lo, hi: (*head, *tail, lo, hi)
    )


def conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dx in x's dtype, dweight, dbias in their parameters' dtypes)."""
    _check(x, weight)
    batch, dim, length = x.shape
    width = weight.shape[1]
    x = _rows(x)
    grad_out = _rows(grad_out.to(x.dtype))
    w, b = _f32(weight), _f32(bias)
    dx = torch.empty(x.shape, dtype=x.dtype)
    dw = torch.zeros((dim, width), dtype=torch.float32)
    db = torch.zeros(dim, dtype=torch.float32)
    if x.numel():
        head = [batch, length, width, int(x.dtype == torch.bfloat16), x.data_ptr()]
        head += [x.stride(0), x.stride(1), w.data_ptr(), _ptr(b), int(silu)]
        tail = [grad_out.data_ptr(), grad_out.stride(0), grad_out.stride(1)]
        tail += [dx.data_ptr(), dx.stride(0), dx.stride(1), dw.data_ptr(), db.data_ptr()]
        cbuild.run(
            _lib().dimbench_conv_bwd, _channel_ranges(dim), lambda i, lo, hi: (*head, *tail, lo, hi)
        )
    return dx, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else None


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("dimbench::causal_conv1d_cpu", mutates_args=(), device_types="cpu")
def _conv_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype)
    conv_forward(x, weight, bias, silu, out)
    return out


@_conv_op.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("dimbench::causal_conv1d_cpu_bwd", mutates_args=(), device_types="cpu")
def _conv_bwd_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> list[Tensor]:
    dx, dw, db = conv_backward(grad_out, x, weight, bias, silu)
    return [dx, dw, db if db is not None else x.new_empty(0)]


@_conv_bwd_op.register_fake
def _(grad_out, x, weight, bias, silu):
    gbias = bias.new_empty(bias.shape) if bias is not None else x.new_empty(0)
    return [x.new_empty(x.shape), weight.new_empty(weight.shape), gbias]


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.silu = silu
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, *([bias] if bias is not None else []))


def _backward(ctx, grad_out):
    x, weight, *rest = ctx.saved_tensors
    bias = rest[0] if ctx.has_bias else None
    dx, dw, db = _conv_bwd_op(grad_out, x, weight, bias, ctx.silu)
    return dx, dw, db if ctx.has_bias else None, None


_conv_op.register_autograd(_backward, setup_context=_setup_context)


def conv_flops(x_shape, w_shape) -> int:
    """Forward FLOPs as torch.utils.flop_counter counts a depthwise conv: 2 * B*D*L * K."""
    batch, dim, length = x_shape
    return 2 * batch * dim * length * w_shape[1]


@register_flop_formula(torch.ops.dimbench.causal_conv1d_cpu)
def _conv_flop(x, weight, *args, **kwargs) -> int:
    return conv_flops(x, weight)


@register_flop_formula(torch.ops.dimbench.causal_conv1d_cpu_bwd)
def _conv_bwd_flop(grad_out, x, weight, *args, **kwargs) -> int:
    return 2 * conv_flops(x, weight)


def causal_conv1d_cpu(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Fused causal depthwise conv1d (+ SiLU) on CPU; x (B, D, L) float32 or bfloat16."""
    _check(x, weight)
    return _conv_op(x, weight, bias, activation == "silu")
