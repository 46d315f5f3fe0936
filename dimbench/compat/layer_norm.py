"""``mamba_ssm.ops.triton.layer_norm``'s ``RMSNorm``, ``rms_norm_fn`` and ``layer_norm_fn`` in
plain PyTorch (mamba_ssm's are Triton kernels; a norm is a small share of a block's time).

The fused-add form Mamba's block stacks use is kept: with ``residual`` the norm reads
``x + residual``, and ``prenorm=True`` also returns that sum (in float32 with
``residual_in_fp32``, else in the residual's or x's dtype), the next block's residual. The sum
and the statistics are computed in float32; the output is in x's dtype. The dual-input options
(``x1``, ``weight1``, ``bias1``, ``rowscale``, ``return_dropout_mask``) are refused with one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def _norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    eps: float,
    dropout_p: float,
    prenorm: bool,
    residual_in_fp32: bool,
    is_rms_norm: bool,
    unsupported: dict,
) -> Tensor | tuple[Tensor, Tensor]:
    given = [k for k, v in unsupported.items() if v is not None and v is not False]
    if given:
        raise NotImplementedError(f"dimbench.compat: the norm does not take {', '.join(given)}")
    if residual is not None:
        residual_dtype = residual.dtype
    else:
        residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    h = F.dropout(x, p=dropout_p) if dropout_p > 0.0 else x
    total = h.float() if residual is None else h.float() + residual.float()
    shape = (total.shape[-1],)
    if is_rms_norm:
        y = F.rms_norm(total, shape, weight.float(), eps)
        y = y if bias is None else y + bias.float()
    else:
        y = F.layer_norm(total, shape, weight.float(), None if bias is None else bias.float(), eps)
    y = y.to(x.dtype)
    return (y, total.to(residual_dtype)) if prenorm else y


def layer_norm_fn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual: Tensor | None = None,
    x1: Tensor | None = None,
    weight1: Tensor | None = None,
    bias1: Tensor | None = None,
    eps: float = 1e-6,
    dropout_p: float = 0.0,
    rowscale: Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    return_dropout_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """LayerNorm (or RMSNorm with ``is_rms_norm``) of ``x + residual``; see the module
    docstring for ``prenorm`` and ``residual_in_fp32``."""
    unsupported = dict(x1=x1, weight1=weight1, bias1=bias1, rowscale=rowscale)
    unsupported["return_dropout_mask"] = return_dropout_mask
    return _norm(
        x, weight, bias, residual, eps, dropout_p, prenorm, residual_in_fp32, is_rms_norm,
        unsupported,
    )  # fmt: skip


def rms_norm_fn(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual: Tensor | None = None,
    x1: Tensor | None = None,
    weight1: Tensor | None = None,
    bias1: Tensor | None = None,
    eps: float = 1e-6,
    dropout_p: float = 0.0,
    rowscale: Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    return_dropout_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """RMSNorm of ``x + residual`` (``layer_norm_fn`` with ``is_rms_norm=True``)."""
    return layer_norm_fn(
        x, weight, bias, residual, x1, weight1, bias1, eps, dropout_p, rowscale, prenorm,
        residual_in_fp32, True, return_dropout_mask,
    )  # fmt: skip


class RMSNorm(nn.Module):
    """mamba_ssm's RMSNorm module: ``weight`` (ones), no bias, optional dropout on the input;
    ``forward(x, residual=None, prenorm=False, residual_in_fp32=False)``."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        dropout_p: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.drop = nn.Dropout(dropout_p) if dropout_p > 0.0 else None
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(
        self,
        x: Tensor,
        residual: Tensor | None = None,
        prenorm: bool = False,
        residual_in_fp32: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return rms_norm_fn(
            x,
            self.weight,
            self.bias,
            residual=residual,
            eps=self.eps,
            dropout_p=self.drop.p if self.drop is not None and self.training else 0.0,
            prenorm=prenorm,
            residual_in_fp32=residual_in_fp32,
        )
