"""``causal_conv1d`` (Dao-AILab's package) on dimbench's conv: ``causal_conv1d_fn`` and
``causal_conv1d_update`` with that package's arguments.

The whole-sequence call runs ``dimbench.ops.causal_conv1d`` (the fused CPU kernel where it
applies). What that op does not take yet runs in plain PyTorch here, marked FALLBACK:
``initial_states`` / ``return_final_states`` (the conv's left context in and out) and the
single-step update, a decode-time call on a (B, D) input that has no kernel of its own.
``seq_idx`` (packed variable-length sequences) and ``causal_conv1d_update``'s circular buffer
(``cache_seqlens``) are refused with one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimbench import ops
from dimbench.compat import settings

Tensor = torch.Tensor

ACTIVATIONS = (None, "silu", "swish")


def _activation(activation: str | None) -> str | None:
    if activation not in ACTIVATIONS:
        raise NotImplementedError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return None if activation is None else "silu"  # swish is silu


def causal_conv1d_fn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    seq_idx: Tensor | None = None,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: Tensor | None = None,
    activation: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """x (B, D, L), weight (D, K), bias (D,) -> act(causal depthwise conv) (B, D, L); with
    ``return_final_states`` also the last K - 1 inputs (B, D, K - 1), the next call's
    ``initial_states``."""
    act = _activation(activation)
    if seq_idx is not None:
        raise NotImplementedError("dimbench.compat: causal_conv1d_fn does not take seq_idx")
    width = weight.shape[-1]
    if initial_states is None and not return_final_states:
        return ops.causal_conv1d(x, weight, bias, act, backend=settings.current().conv)
    # FALLBACK (plain PyTorch) until dimbench.ops.causal_conv1d takes the left context
    context = initial_states if initial_states is not None else x.new_zeros(*x.shape[:2], width - 1)
    full = torch.cat([context.to(x.dtype), x], dim=-1)
    out = F.conv1d(full, weight.unsqueeze(1), bias, groups=weight.shape[0])
    out = F.silu(out) if act else out
    if not return_final_states:
        return out
    final = full[..., full.shape[-1] - (width - 1) :]
    if final_states_out is not None:
        final = final_states_out.copy_(final)
    return out, final


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    cache_seqlens: Tensor | None = None,
    conv_state_indices: Tensor | None = None,
) -> Tensor:
    """One decoding step (FALLBACK, plain PyTorch): x (B, D) or (B, D, L) new inputs,
    conv_state (B, D, S >= K - 1) the previous inputs, updated in place (shifted left by L,
    x appended); returns the conv outputs at the new positions, x's shape."""
    act = _activation(activation)
    if cache_seqlens is not None or conv_state_indices is not None:
        raise NotImplementedError(
            "dimbench.compat: causal_conv1d_update takes neither cache_seqlens nor "
            "conv_state_indices"
        )
    squeeze = x.dim() == 2
    xs = x.unsqueeze(-1) if squeeze else x
    width, length, kept = weight.shape[-1], xs.shape[-1], conv_state.shape[-1]
    full = torch.cat([conv_state.to(xs.dtype), xs], dim=-1)  # (B, D, S + L)
    conv_state.copy_(full[..., -kept:])
    window = full[..., full.shape[-1] - length - (width - 1) :]
    out = F.conv1d(window, weight.unsqueeze(1), bias, groups=weight.shape[0])
    out = F.silu(out) if act else out
    return out.squeeze(-1) if squeeze else out
