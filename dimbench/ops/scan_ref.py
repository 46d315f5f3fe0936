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


def _reduce_groups(gM: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, D, N, L) per-channel gradient -> the shape of B or C ((B, N, L) or (B, G, N, L))."""
    if like.dim() == 3:
        return gM.sum(1)
    batch, dim = gM.shape[:2]
    groups = like.shape[1]
    return gM.reshape(batch, groups, dim // groups, *gM.shape[2:]).sum(2)


def selective_scan_ref_bwd(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> list[torch.Tensor | None]:
    """Hand-written backward of :func:`selective_scan_ref`: a reverse sequential loop.

    Returns the gradients of (u, delta, A, B, C, D, z, delta_bias), None where an input is None.
    With h_t = dL/dx_t:  h_t = exp(dt_{t+1} A) h_{t+1} + gy_t C_t, and every input gradient is
    a contraction of h_t with the forward's terms.
    """
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    gout = grad_out.to(acc)
    uf, A_ = u.to(acc), A.to(acc)
    dt_raw = delta.to(acc) + (delta_bias.to(acc)[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt_raw) if delta_softplus else dt_raw
    dim, length = u.shape[1], u.shape[2]
    Bx, Cx = expand_groups(B.to(acc), dim), expand_groups(C.to(acc), dim)

    # forward again, keeping every state
    x = uf.new_zeros(u.shape[0], dim, A.shape[1])
    states = []
    for t in range(length):
        x = (
            torch.exp(dt[:, :, t, None] * A_) * x
            + (dt[:, :, t] * uf[:, :, t])[..., None] * Bx[..., t]
        )
        states.append(x)
    y = torch.stack([(s * Cx[..., t]).sum(-1) for t, s in enumerate(states)], -1)
    if length == 0:
        y = uf.new_zeros(u.shape)
    if D is not None:
        y = y + uf * D.to(acc)[:, None]

    grads: dict[str, torch.Tensor | None] = {"D": None, "z": None, "delta_bias": None}
    if z is not None:
        zf = z.to(acc)
        sig = torch.sigmoid(zf)
        gy = gout * zf * sig
        grads["z"] = (gout * y * sig * (1 + zf * (1 - sig))).to(z.dtype)
    else:
        gy = gout
    gu = gy * D.to(acc)[:, None] if D is not None else torch.zeros_like(uf)
    if D is not None:
        grads["D"] = (gy * uf).sum((0, 2)).to(D.dtype)

    gdt = torch.zeros_like(dt)
    gA = torch.zeros_like(A_)
    gBx = torch.zeros_like(Bx)
    gCx = torch.zeros_like(Cx)
    h = torch.zeros_like(x)
    for t in reversed(range(length)):
        if t + 1 < length:
            h = h * torch.exp(dt[:, :, t + 1, None] * A_)
        h = h + gy[:, :, t, None] * Cx[..., t]
        dA = torch.exp(dt[:, :, t, None] * A_)
        xprev = states[t - 1] if t > 0 else torch.zeros_like(h)
        hx = h * xprev * dA
        gdt[:, :, t] = (hx * A_).sum(-1) + (h * Bx[..., t]).sum(-1) * uf[:, :, t]
        gA += (hx * dt[:, :, t, None]).sum(0)
        gBx[..., t] = h * (dt[:, :, t] * uf[:, :, t])[..., None]
        gu[:, :, t] += (h * Bx[..., t]).sum(-1) * dt[:, :, t]
        gCx[..., t] = gy[:, :, t, None] * states[t]

    gdelta = gdt * torch.sigmoid(dt_raw) if delta_softplus else gdt
    if delta_bias is not None:
        grads["delta_bias"] = gdelta.sum((0, 2)).to(delta_bias.dtype)
    return [
        gu.to(u.dtype),
        gdelta.to(delta.dtype),
        gA.to(A.dtype),
        _reduce_groups(gBx, B).to(B.dtype),
        _reduce_groups(gCx, C).to(C.dtype),
        grads["D"],
        grads["z"],
        grads["delta_bias"],
    ]
