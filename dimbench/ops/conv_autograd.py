"""What every fused causal-conv backend registers the same way: the autograd formula over its
forward and backward custom ops (backward recomputes from x, weight and bias) and their FLOPs."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula


def conv_flops(x_shape, w_shape) -> int:
    """Forward FLOPs as torch.utils.flop_counter counts a depthwise conv: 2 * B*D*L * K."""
    batch, dim, length = x_shape
    return 2 * batch * dim * length * w_shape[1]


def register_conv_op(forward_op, backward_op, name: str) -> None:
    """Autograd and FLOP formulas for ``forward_op(x, weight, bias, silu)`` (the custom op
    ``dimbench::<name>``) whose backward is ``backward_op(grad_out, x, weight, bias, silu) ->
    [dx, dweight, dbias]`` (``dimbench::<name>_bwd``)."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, silu = inputs
        ctx.silu = silu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, *([bias] if bias is not None else []))

    def backward(ctx, grad_out):
        x, weight, *rest = ctx.saved_tensors
        bias = rest[0] if ctx.has_bias else None
        dx, dw, db = backward_op(grad_out, x, weight, bias, ctx.silu)
        return dx, dw, db if ctx.has_bias else None, None

    forward_op.register_autograd(backward, setup_context=setup_context)

    @register_flop_formula(getattr(torch.ops.dimbench, name))
    def _forward_flops(x, weight, *args, **kwargs) -> int:
        return conv_flops(x, weight)

    @register_flop_formula(getattr(torch.ops.dimbench, f"{name}_bwd"))
    def _backward_flops(grad_out, x, weight, *args, **kwargs) -> int:
        return 2 * conv_flops(x, weight)
