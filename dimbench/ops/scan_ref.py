"""Reference selective scan: a plain PyTorch sequential loop (the correctness twin of every kernel).

Semantics of mamba_ssm's ``selective_scan_fn`` / ``selective_scan_ref`` (see REFERENCE.md
section 3):
    delta' = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    x_t = exp(delta'_t * A) * x_{t-1} + delta'_t * B_t * u_t
    y_t = <C_t, x_t> + D * u_t;   out = y * silu(z) when z is given
B and C are time-varying ((B, N, L), or (B, G, N, L) with channel d in group d // (D / G)) or
fixed ((D, N), the same every step). With a complex A the state is complex, y_t is
2 Re <C_t, x_t>, and time-varying B, C are complex or real pairs ((..., N, 2L): real and
imaginary parts interleaved along time, as mamba's kernel reads them); fixed ones are complex.
The state is float32 / complex64 (float64 / complex128 when u is float64), and autograd
differentiates every function here; the last state x_{L-1} is (B, D, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def acc_dtype(u: torch.Tensor, A: torch.Tensor) -> torch.dtype:
    """The state's dtype: float32 (float64 for float64 u), complex for a complex A."""
    real = torch.float64 if u.dtype == torch.float64 else torch.float32
    if A.is_complex():
        return torch.complex128 if real == torch.float64 else torch.complex64
    return real


def as_state_dtype(M: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """B or C in the state's dtype; real pairs (..., 2L) become complex (..., L)."""
    if acc.is_complex and not M.is_complex() and M.dim() >= 3:
        real = torch.float64 if acc == torch.complex128 else torch.float32
        M = torch.view_as_complex(M.to(real).unflatten(-1, (-1, 2)).contiguous())
    return M.to(acc)


def expand_groups(M: torch.Tensor, dim: int, batch: int | None = None) -> torch.Tensor:
    """(B, N, L), (B, G, N, L) or fixed (D, N) -> (B, dim, N, L) (broadcast views where it can),
    channel d using group d // (dim // G). A fixed one needs ``batch`` and gives (B, dim, N, 1)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, *M.shape, 1)
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
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sequential scan over L with an explicit state; returns (B, D, L) in ``u``'s dtype (and the
    last state, (B, D, N) in the state's dtype, with ``return_last_state``)."""
    dtype_in = u.dtype
    acc = acc_dtype(u, A)
    real = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(real), delta.to(real), A.to(acc)
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(real)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(as_state_dtype(B, acc), dim, batch)  # (B, D, N, L or 1)
    Cx = expand_groups(as_state_dtype(C, acc), dim, batch)
    x = torch.zeros(batch, dim, A.shape[1], dtype=acc)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (B, D, 1)
        Bt, Ct = Bx[..., min(t, Bx.shape[-1] - 1)], Cx[..., min(t, Cx.shape[-1] - 1)]
        x = torch.exp(dt * A) * x + dt * Bt * u[:, :, t, None]
        y = (x * Ct).sum(-1)
        ys.append(2 * y.real if y.is_complex() else y)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(real)[:, None]
    if z is not None:
        y = y * F.silu(z.to(real))
    out = y.to(dtype_in)
    return (out, x) if return_last_state else out


def _reduce_groups(gM: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, D, N, L) per-channel gradient -> the shape of B or C ((B, N, L), (B, G, N, L) or a
    fixed (D, N))."""
    if like.dim() == 2:
        return gM.sum((0, 3))
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
    grad_last: torch.Tensor | None = None,
) -> list[torch.Tensor | None]:
    """Hand-written backward of :func:`selective_scan_ref` for a real A: a reverse sequential loop.

    Returns the gradients of (u, delta, A, B, C, D, z, delta_bias), None where an input is None.
    With h_t = dL/dx_t:  h_t = exp(dt_{t+1} A) h_{t+1} + gy_t C_t (h_{L-1} also gets the last
    state's gradient ``grad_last``), and every input gradient is a contraction of h_t with the
    forward's terms.
    """
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    gout = grad_out.to(acc)
    uf, A_ = u.to(acc), A.to(acc)
    dt_raw = delta.to(acc) + (delta_bias.to(acc)[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt_raw) if delta_softplus else dt_raw
    batch, dim, length = u.shape
    Bx = expand_groups(B.to(acc), dim, batch).expand(batch, dim, A.shape[1], length)
    Cx = expand_groups(C.to(acc), dim, batch).expand(batch, dim, A.shape[1], length)

    # forward again, keeping every state
    x = uf.new_zeros(batch, dim, A.shape[1])
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
    gBx = torch.zeros(Bx.shape, dtype=acc)
    gCx = torch.zeros(Cx.shape, dtype=acc)
    h = grad_last.to(acc).clone() if grad_last is not None else torch.zeros_like(x)
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
