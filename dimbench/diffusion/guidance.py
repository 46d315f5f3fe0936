"""Turning a network into the function the samplers call: ``fn(x, t) -> model output``.

The output keeps the network's layout: C channels of epsilon, then (for ``learn_sigma`` models)
C channels of the variance interpolation. Classifier-free guidance is applied in the DiM paper's
form, eps = eps_c + s * (eps_c - eps_u) (s = 0.4 at 256 px, i.e. "guidance 1.4"), with the
conditional and unconditional branches in one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_eps(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_c + s * (eps_c - eps_u)."""
    return cond + scale * (cond - uncond)


def make_model_fn(
    model: nn.Module,
    y: torch.Tensor,
    cfg_scale: float = 0.0,
    null_label: int | None = None,
    channels: int | None = None,
) -> ModelFn:
    """Wrap ``model(x, t, y)`` for a sampler, with classifier-free guidance when cfg_scale != 0.

    ``null_label`` defaults to ``model.num_classes`` (the dropped-label index); ``channels`` (the
    epsilon channels) defaults to ``model.in_channels``.
    """
    if cfg_scale == 0.0:
        return lambda x, t: model(x, t, y)
    null = int(model.num_classes if null_label is None else null_label)
    c = int(model.in_channels if channels is None else channels)
    y_both = torch.cat([y, torch.full_like(y, null)])

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), y_both)
        cond, uncond = out.chunk(2)
        eps = guided_eps(cond[:, :c], uncond[:, :c], cfg_scale)
        # a learned variance follows the conditional branch, as in DiT's sampler
        return torch.cat([eps, cond[:, c:]], dim=1)

    return fn
