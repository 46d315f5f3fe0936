"""Reference selective scan: a plain PyTorch sequential loop (the correctness twin of every kernel).

Semantics of mamba_ssm's ``selective_scan_fn`` (see REFERENCE.md section 3):
    delta' = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    x_t = exp(delta'_t * A) * x_{t-1} + delta'_t * B_t * u_t
    y_t = <C_t, x_t> + D * u_t;   out = y * silu(z) when z is given
The state is float32 (float64 when the inputs are float64), and autograd differentiates it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, dim, N, L), channel d using group d // (dim // G)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], dim, *M.shape[1:])
    groups = M.shape[1]
    return M.repeat_interleave(dim // groups, dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Sequential scan over L with an explicit state; returns (B, D, L) in ``u``'s dtype."""
    dtype_in = u.dtype
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(acc), delta.to(acc), A.to(acc)
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B.to(acc), dim)  # (B, D, N, L)
    Cx = expand_groups(C.to(acc), dim)
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (B, D, 1)
        x = torch.exp(dt * A) * x + dt * Bx[..., t] * u[:, :, t, None]
        ys.append((x * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(acc)[:, None]
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(dtype_in)
