"""The "cpu" causal depthwise conv1d backend: a vectorised C++ kernel (csrc/causal_conv1d.cpp).

One pass forward: reads x once and writes act(conv(x) + bias) once, fp32 or bf16 activations
with fp32 weights and accumulation (torch's route pads a copy of x, convolves, then applies
SiLU). The backward saves nothing but x: it recomputes the pre-activation and writes dx, with
each channel's weight and bias gradient summed by one thread in a fixed order (deterministic).

Layouts (:mod:`dimbench.ops.layout`): x decides. Channel-major x (time contiguous) and
channel-last x (channels contiguous: ``(B, L, D).transpose(1, 2)`` or a channel slice of a
(B, L, 2D) projection, as the fused mixer passes x) are read in place, and the output and dx
come back in x's layout (dense); grad_out is copied into it where it is not; x in neither layout
is copied to channel-major first.

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

from dimbench.ops import cbuild
from dimbench.ops import layout as lay
from dimbench.ops.conv_autograd import register_conv_op

SOURCE = Path(__file__).parent / "csrc" / "causal_conv1d.cpp"
DTYPES = (torch.float32, torch.bfloat16)  # activation dtypes the kernel reads and writes
MIN_CHANNELS_PER_THREAD = 8  # a unit is one channel over the batch
LANES = 16  # channels per vector channel-last: threads split the channels in blocks of these

Tensor = torch.Tensor


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(cbuild.build(SOURCE)))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    head = [i64, i64, i64, i32, i32, ptr, ptr, ptr, ptr, i32]  # strides: int64[3] pointers
    lib.dimbench_conv_fwd.argtypes = head + [ptr, ptr, i64, i64]
    lib.dimbench_conv_fwd.restype = None
    lib.dimbench_conv_bwd.argtypes = head + [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64]
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


def layout_for(x: Tensor) -> str:
    """The layout the kernel reads x in and writes out (and dx) in: x's own, or channel-major for
    an x in neither."""
    return lay.layout_of(x) or lay.CHANNEL_MAJOR


def _strides(t: Tensor):
    """t's (batch, channel, time) strides as the kernel's int64[3] (kept alive by the caller)."""
    return (ctypes.c_int64 * 3)(*t.stride())


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


def _channel_ranges(dim: int, layout: str) -> list[tuple[int, int]]:
    if layout == lay.CHANNEL_MAJOR:
        return cbuild.ranges(dim, MIN_CHANNELS_PER_THREAD)
    blocks = cbuild.ranges((dim + LANES - 1) // LANES, 1)
    return [(lo * LANES, min(hi * LANES, dim)) for lo, hi in blocks]


def conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool, out: Tensor) -> None:
    """act(conv(x) + bias) into ``out`` ((B, D, L) in x's dtype and ``layout_for(x)``)."""
    _check(x, weight)
    batch, dim, length = x.shape
    if x.numel() == 0:
        return
    layout = layout_for(x)
    x = lay.to_layout(x, layout)
    if not lay.fits(out, layout):
        raise ValueError(f"conv_forward: out {tuple(out.stride())} is not {layout}")
    w, b = _f32(weight), _f32(bias)
    xs, os_ = _strides(x), _strides(out)
    head = [batch, length, w.shape[1], int(x.dtype == torch.bfloat16)]
    head += [int(layout == lay.CHANNEL_LAST), x.data_ptr(), xs, w.data_ptr(), _ptr(b), int(silu)]
    tail = [out.data_ptr(), os_]
    cbuild.run(
        _lib().dimbench_conv_fwd,
        _channel_ranges(dim, layout),
        lambda i, lo, hi: (*head, *tail, lo, hi),
    )


def conv_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dx in x's dtype and ``layout_for(x)``, dweight, dbias in their parameters' dtypes)."""
    _check(x, weight)
    batch, dim, length = x.shape
    width = weight.shape[1]
    layout = layout_for(x)
    x = lay.to_layout(x, layout)
    grad_out = lay.to_layout(grad_out, layout, x.dtype)
    w, b = _f32(weight), _f32(bias)
    dx = lay.new_empty(x, layout, huge=True)
    dw = torch.zeros((dim, width), dtype=torch.float32)
    db = torch.zeros(dim, dtype=torch.float32)
    if x.numel():
        strides = [_strides(t) for t in (x, grad_out, dx)]
        head = [batch, length, width, int(x.dtype == torch.bfloat16)]
        head += [int(layout == lay.CHANNEL_LAST), x.data_ptr(), strides[0], w.data_ptr()]
        head += [_ptr(b), int(silu)]
        tail = [grad_out.data_ptr(), strides[1], dx.data_ptr(), strides[2]]
        tail += [dw.data_ptr(), db.data_ptr()]
        cbuild.run(
            _lib().dimbench_conv_bwd,
            _channel_ranges(dim, layout),
            lambda i, lo, hi: (*head, *tail, lo, hi),
        )
    return dx, dw.to(weight.dtype), db.to(bias.dtype) if bias is not None else None


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("dimbench::causal_conv1d_cpu", mutates_args=(), device_types="cpu")
def _conv_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    out = lay.new_empty(x, layout_for(x), huge=True)
    conv_forward(x, weight, bias, silu, out)
    return out


@_conv_op.register_fake
def _(x, weight, bias, silu):
    return lay.new_empty(x, layout_for(x))


@torch.library.custom_op("dimbench::causal_conv1d_cpu_bwd", mutates_args=(), device_types="cpu")
def _conv_bwd_op(
    grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> list[Tensor]:
    dx, dw, db = conv_backward(grad_out, x, weight, bias, silu)
    return [dx, dw, db if db is not None else x.new_empty(0)]


@_conv_bwd_op.register_fake
def _(grad_out, x, weight, bias, silu):
    gbias = bias.new_empty(bias.shape) if bias is not None else x.new_empty(0)
    return [lay.new_empty(x, layout_for(x)), weight.new_empty(weight.shape), gbias]


register_conv_op(_conv_op, _conv_bwd_op, "causal_conv1d_cpu")


def causal_conv1d_cpu(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Fused causal depthwise conv1d (+ SiLU) on CPU; x (B, D, L) float32 or bfloat16, the output
    in x's layout (channel-major or channel-last)."""
    _check(x, weight)
    return _conv_op(x, weight, bias, activation == "silu")
