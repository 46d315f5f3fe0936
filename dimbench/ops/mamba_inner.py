"""Mamba-1's mixer between in_proj and the residual, as one autograd node (mamba_ssm's
``mamba_inner_fn`` design) and its plain-autograd twin.

``mamba_inner(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, out_proj_weight, A,
D, delta_bias)`` takes the in_proj outputs x, z (B, E, L) and computes
    u = silu(causal_conv1d(x) + conv_bias);  (dt_in, B, C) = x_proj(u)
    dt = dt_proj(dt_in) (bias in the scan);  y = selective_scan(u, dt, A, B, C, D, z,
    delta_bias, softplus) (D skip, silu(z) gate);  out = out_proj(y)  -> (B, L, d_model)
(``out_proj_weight=None`` returns y, (B, E, L)). Or it takes in_proj's input (``hidden``) or, for
a DiM block, the residual stream (``stream``, with the pre-norm and the output gate folded in).

Layout: from ``hidden`` or ``stream`` the node is channel-last end to end on the CPU. in_proj is
one GEMM producing xz (B, L, 2E) (F.linear's layout: MKL runs that shape 30-45% faster on one
core than the (B, 2E, L) one), x and z are its halves seen (B, E, L) (channel stride 1), the conv
and the scan read them in place and write u and y as (B, L, E), x_proj, dt_proj (one GEMM
producing (B, L, E)) and out_proj take and give (B, L, C) rows, and backward runs the same way:
du, ddelta, dz come back (B, L, E), in_proj's gradients are two GEMMs each on dx and dz (as fast
as one on a (B, L, 2E) buffer: no concatenation). Given x, z, the node follows their layout.
Forward touches each (B, E, L) tensor as few times as unfused matmuls allow: the conv writes u
once where x_proj and the scan read it, dt is written once by its matmul, B and C are read from
x_proj's output without copies of their own, no activation is made contiguous; big outputs go to
huge pages (:mod:`dimbench.ops.hugepages`). The node saves only its inputs (and, by ``keep``,
x or xz) and the small (B, L, R + 2N) x_proj output; backward recomputes u, dt and the scan's
forward (its output y for out_proj's weight gradient and the states the scan's backward reads),
so a block keeps little more than its inputs for backward where autograd of the unfused sequence
keeps about seven (B, E, L) tensors. ``save_scan=True`` keeps y and the scan's saved states
instead: more memory, one scan forward less.

The scan runs through the custom ops ``dimbench::selective_scan`` / ``selective_scan_bwd`` (any
backend); the conv through the ``cpu`` kernel's ops or, for other conv backends, autograd of the
recomputed conv. Under CPU autocast the matmuls and activations run in the autocast dtype
(explicitly, the same casts autocast makes), the conv weights, A, D and the scan state in fp32.

``mamba_inner_ref`` is the twin: the same sequence as separate ops that autograd differentiates,
channel-major (what ``MambaMixer`` ran before the fused path, and still runs on the meta device
for FLOPs: the same matmul, conv and scan FLOPs as the node).
"""

from __future__ import annotations

import torch

from dimbench.ops import backends, hugepages
from dimbench.ops import conv as conv_mod
from dimbench.ops import layout as lay
from dimbench.ops import scan as scan_mod
from dimbench.ops.conv import causal_conv1d
from dimbench.ops.scan import selective_scan

Tensor = torch.Tensor


def _weight_matmul(weight: Tensor, x: Tensor) -> Tensor:
    """(O, I) @ (B, I, L) -> (B, O, L), on transposed views (BLAS flags, no copies)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


def _matmul_weight(x: Tensor, weight: Tensor) -> Tensor:
    """(B, L, I) @ (O, I)^T -> (B, L, O), i.e. F.linear without a bias."""
    return torch.bmm(x, weight.t().expand(x.shape[0], -1, -1))


def _batch_mm_sum(a: Tensor, b: Tensor) -> Tensor:
    """sum_i a[i] @ b[i] in fp32, one matmul per batch element (no (B, O, I) stack)."""
    total = torch.mm(a[0], b[0]).float()
    for i in range(1, a.shape[0]):
        total += torch.mm(a[i], b[i])
    return total


def _compute_dtype(x: Tensor) -> torch.dtype:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def mamba_inner_ref(
    x: Tensor,
    z: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    out_proj_weight: Tensor | None,
    A: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
    scan_backend: str = "auto",
    conv_backend: str = "auto",
) -> Tensor:
    """The unfused twin of :func:`mamba_inner` (same arguments, same result)."""
    dt_rank = dt_proj_weight.shape[1]
    d_state = A.shape[1]
    u = causal_conv1d(x, conv_weight, conv_bias, "silu", backend=conv_backend)
    x_dbl = _matmul_weight(u.transpose(1, 2), x_proj_weight)  # (B, L, R + 2N)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = _weight_matmul(dt_proj_weight, dt.transpose(1, 2))  # (B, E, L); bias in the scan
    y = selective_scan(
        u,
        dt,
        A,
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        backend=scan_backend,
    )
    if out_proj_weight is None:
        return y
    return _matmul_weight(y.transpose(1, 2), out_proj_weight)  # (B, L, d_model)


# ----------------------------------------------------------------------------- the fused node's
# matmuls: token-major (B, L, C) operands as single (B * L, C) matrices, in the GEMM forms MKL
# runs fastest on one core (measured at DiM-S/2 widths: in_proj producing (B, L, 2E) at 88-91
# GFLOP/s where producing (B, 2E, L) runs at 60-66; dt_proj's K = R GEMM 3x faster producing
# (B, L, E); weight gradients as a^T b), written into huge-page buffers (a fresh 36 MB output
# otherwise costs ~10% of its GEMM in 4 KiB page faults).


def _rows(t: Tensor) -> Tensor | None:
    """(B, L, C) with unit C stride as one (B * L, C) matrix (a view), else None."""
    batch, length, width = t.shape
    if width > 1 and t.stride(2) != 1:
        return None
    if length == 1:
        row = t.stride(0)
    elif batch == 1 or t.stride(0) == length * t.stride(1):
        row = t.stride(1)
    else:
        return None
    if row < width and batch * length > 1:
        return None
    return t.as_strided((batch * length, width), (row, 1))


def _empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    if like.device.type == "cpu" and not torch.compiler.is_compiling():
        return hugepages.empty(shape, like.dtype)
    return like.new_empty(shape)


def _mm(a: Tensor, m: Tensor) -> Tensor:
    """(B, L, I) @ (I, O) -> (B, L, O) contiguous."""
    if torch.compiler.is_compiling():
        return torch.matmul(a, m)
    batch, length, _ = a.shape
    out = _empty((batch, length, m.shape[1]), a)
    flat = _rows(a)
    if flat is not None:
        torch.mm(flat, m, out=out.view(batch * length, -1))
    else:
        torch.bmm(a, m.expand(batch, -1, -1), out=out)
    return out


def _linear(a: Tensor, weight: Tensor) -> Tensor:
    """F.linear(a, weight) without a bias: (B, L, I) x (O, I) -> (B, L, O) contiguous."""
    return _mm(a, weight.t())


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """(B, L, I) @ (B, I, O) -> (B, L, O) contiguous."""
    if torch.compiler.is_compiling():
        return torch.bmm(a, b)
    return torch.bmm(a, b, out=_empty((a.shape[0], a.shape[1], b.shape[2]), a))


def _addmm_(acc: Tensor, a: Tensor, m: Tensor) -> Tensor:
    """acc += a @ m for (B, L, O), (B, L, I), (I, O), in place."""
    fa, fc = _rows(a), _rows(acc)
    if fa is not None and fc is not None and not torch.compiler.is_compiling():
        fc.addmm_(fa, m)
        return acc
    return acc.baddbmm_(a, m.expand(a.shape[0], -1, -1))


def _sum_mm(a: Tensor, b: Tensor) -> Tensor:
    """sum_i a[i]^T @ b[i] for (B, L, I), (B, L, J) -> (I, J) in fp32: one GEMM over the B * L
    rows where both are row matrices."""
    fa, fb = _rows(a), _rows(b)
    if fa is not None and fb is not None:
        return torch.mm(fa.t(), fb).float()
    return _batch_mm_sum(a.transpose(1, 2), b)


def _split_xz(xz: Tensor) -> tuple[Tensor, Tensor]:
    """x and z (B, E, L) as channel-last views of in_proj's (B, L, 2E) output."""
    dim = xz.shape[-1] // 2
    return xz[..., :dim].transpose(1, 2), xz[..., dim:].transpose(1, 2)


class _Conv:
    """The conv's forward and backward for one resolved backend."""

    def __init__(self, backend: str, x: Tensor, weight: Tensor) -> None:
        self.backend = conv_mod.resolve_for(x, weight, backend)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.backend == "cpu":  # u in x's layout
            return torch.ops.dimbench.causal_conv1d_cpu(x, weight, bias, True)
        return causal_conv1d(x, weight, bias, "silu", backend=self.backend)

    def backward(self, grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None):
        if self.backend == "cpu":
            dx, dw, db = torch.ops.dimbench.causal_conv1d_cpu_bwd(grad, x, weight, bias, True)
            return dx, dw, db if bias is not None else None
        leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, weight, bias)]
        with torch.enable_grad():
            u = causal_conv1d(*leaves, "silu", backend=self.backend)
            wanted = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(u, wanted, grad))
        return tuple(next(grads) if t is not None else None for t in leaves)


def _project(u, x_dbl, dt_proj_weight, dt_rank, d_state):
    """dt (B, E, L) in u's layout (channel-last: one GEMM producing (B, L, E)) and B, C as
    (B, N, L) views of x_dbl."""
    dt_in = x_dbl[..., :dt_rank]
    if lay.layout_of(u) == lay.CHANNEL_LAST:
        dt = _linear(dt_in, dt_proj_weight).transpose(1, 2)
    else:
        dt = _weight_matmul(dt_proj_weight, dt_in.transpose(1, 2))
    B = x_dbl[..., dt_rank : dt_rank + d_state].transpose(1, 2)
    C = x_dbl[..., dt_rank + d_state :].transpose(1, 2)
    return dt, B, C


def _out_proj(y: Tensor, wout: Tensor, gate: Tensor | None) -> Tensor:
    """out_proj(y) (B, L, d_model), with (1 + gate) folded into one weight per batch element."""
    if gate is None:
        return _linear(y.transpose(1, 2), wout)
    w_gated = wout[None] * (1 + gate.to(wout.dtype))[:, :, None]  # (B, d_model, E)
    return _bmm(y.transpose(1, 2), w_gated.transpose(1, 2))


def _norm_modulate(stream: Tensor, weight: Tensor, shift: Tensor, scale: Tensor, eps: float):
    """DiM's pre-norm: RMSNorm(stream) * weight * (1 + scale) + shift, in fp32.
    Returns (h, n, rstd, a) with n the normalised stream and a = weight * (1 + scale)."""
    s = stream.float()
    rstd = torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)
    n = s * rstd
    a = weight.float() * (1 + scale.float())  # (B, D)
    return torch.addcmul(shift.float()[:, None], n, a[:, None]), n, rstd, a


def _norm_modulate_bwd(dh: Tensor, n: Tensor, rstd: Tensor, a: Tensor, weight: Tensor, scale):
    """Gradients of ``_norm_modulate`` w.r.t. stream, weight, shift and scale."""
    dh = dh.float()
    d_shift = dh.sum(1)
    da = (dh * n).sum(1)  # (B, D)
    d_weight = (da * (1 + scale.float())).sum(0)
    d_scale = da * weight.float()
    dn = dh * a[:, None]
    d_stream = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
    return d_stream, d_weight, d_shift, d_scale


def _kept_for_backward(keep: str, xz: Tensor, x: Tensor) -> list[Tensor]:
    """What of in_proj's output the node keeps: xz itself, a dense copy of x (not the view,
    which would keep all of xz alive), or nothing."""
    if keep == "xz":
        return [xz]
    if keep == "x":
        return [lay.new_empty(x, lay.CHANNEL_LAST, huge=True).copy_(x)]
    return []


def _kept_or_recomputed(keep: str, rest: list, hidden: Tensor, w_in: Tensor):
    """x and z for backward: the saved ones (popped from ``rest``), the others from in_proj."""
    if keep == "xz":
        return _split_xz(rest.pop(0))
    if keep == "x":
        return rest.pop(0), _linear(hidden, w_in.chunk(2, dim=0)[1]).transpose(1, 2)
    return _split_xz(_linear(hidden, w_in))


# What the node's first two inputs are
FROM_XZ, FROM_HIDDEN, FROM_STREAM = "xz", "hidden", "stream"


class MambaInnerFn(torch.autograd.Function):
    """Inputs (x, z, ...); (hidden, in_proj_weight, ...); or (stream, in_proj_weight, ...) with
    DiM's pre-norm parameters (norm weight, shift, scale): see ``mamba_inner``."""

    @staticmethod
    def forward(
        ctx,
        first,
        second,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        out_proj_weight,
        A,
        D,
        delta_bias,
        norm_weight,
        shift,
        scale,
        gate,
        delta_softplus,
        scan_backend,
        conv_backend,
        save_scan,
        source,
        keep,
        eps,
    ):
        cdt = _compute_dtype(first if source != FROM_STREAM else second)
        ctx.in_dtypes = (first.dtype, second.dtype)
        keep = keep if source != FROM_XZ else ""  # x and z are the inputs then
        with torch.autocast("cpu", enabled=False):
            if source == FROM_XZ:
                x, z = first.to(cdt), second.to(cdt)
                first, second = x, z
                saved_xz = []
            else:  # second = in_proj's weight; x, z channel-last views of one (B, L, 2E) GEMM
                if source == FROM_STREAM:
                    hidden = _norm_modulate(first, norm_weight, shift, scale, eps)[0].to(cdt)
                else:
                    first = hidden = first.to(cdt)
                xz = _linear(hidden, second.to(cdt))
                del hidden
                x, z = _split_xz(xz)
                saved_xz = _kept_for_backward(keep, xz, x)
                del xz
            wx, wdt = x_proj_weight.to(cdt), dt_proj_weight.to(cdt)
            wout = out_proj_weight.to(cdt) if out_proj_weight is not None else None
            conv = _Conv(conv_backend, x, conv_weight)
            scan = backends.resolve("scan", scan_backend, x.device, x.dtype)
            dt_rank, d_state = dt_proj_weight.shape[1], A.shape[1]

            u = conv.forward(x, conv_weight, conv_bias)  # in x's layout (the cpu kernel)
            x_dbl = _linear(u.transpose(1, 2), wx)  # (B, L, R + 2N)
            dt, B, C = _project(u, x_dbl, wdt, dt_rank, d_state)
            y, *states = torch.ops.dimbench.selective_scan(
                u, dt, A, B, C, D, z, delta_bias, delta_softplus, scan, save_scan
            )
            del u, dt, x, z
            out = y if wout is None else _out_proj(y, wout, gate)

        ctx.cfg = (cdt, conv, scan, delta_softplus, dt_rank, d_state, save_scan, source, keep)
        ctx.eps = eps
        optional = (conv_bias, out_proj_weight, D, delta_bias, norm_weight, shift, scale, gate)
        ctx.has = tuple(t is not None for t in optional)
        kept = [y, *states] if save_scan else []
        ctx.save_for_backward(
            first,
            second,
            x_dbl,
            conv_weight,
            x_proj_weight,
            dt_proj_weight,
            A,
            *[t for t in optional if t is not None],
            *saved_xz,
            *kept,
        )
        return out

    @staticmethod
    def backward(ctx, dout):
        cdt, conv, scan, softplus, dt_rank, d_state, save_scan, source, keep = ctx.cfg
        first, second, x_dbl, conv_weight, x_proj_weight, dt_proj_weight, A, *rest = (
            ctx.saved_tensors
        )
        conv_bias, out_proj_weight, D, delta_bias, norm_weight, shift, scale, gate = (
            rest.pop(0) if present else None for present in ctx.has
        )
        with torch.autocast("cpu", enabled=False):
            if source == FROM_XZ:
                x, z = first, second
            else:
                w_in = second.to(cdt)
                if source == FROM_STREAM:
                    h32, n, rstd, a = _norm_modulate(first, norm_weight, shift, scale, ctx.eps)
                    hidden = h32.to(cdt)
                    del h32
                else:
                    hidden = first
                x, z = _kept_or_recomputed(keep, rest, hidden, w_in)
            wx, wdt = x_proj_weight.to(cdt), dt_proj_weight.to(cdt)
            wout = out_proj_weight.to(cdt) if out_proj_weight is not None else None
            dout = dout.to(cdt)

            u = conv.forward(x, conv_weight, conv_bias)
            dt, B, C = _project(u, x_dbl, wdt, dt_rank, d_state)
            if save_scan:
                y, *states = rest
            else:
                y, *states = torch.ops.dimbench.selective_scan(
                    u, dt, A, B, C, D, z, delta_bias, softplus, scan, True
                )
            d_gate = None
            if wout is None:
                d_out_proj, dy = None, dout
            elif gate is None:
                d_out_proj = _sum_mm(dout, y.transpose(1, 2))  # (d_model, E)
                dy = _mm(dout, wout).transpose(1, 2)  # (B, L, E) seen (B, E, L)
            else:
                # M_b = dout_b^T y_b gives both the weight's gradient, sum_b (1 + g_b) M_b,
                # and the gate's, sum_e W * M_b (= sum over tokens of dout * out_proj(y))
                g1 = 1 + gate.float()
                d_out_proj = torch.zeros(wout.shape, dtype=torch.float32, device=y.device)
                d_gate = torch.empty_like(gate, dtype=torch.float32)
                for b in range(y.shape[0]):
                    m = torch.mm(dout[b].t(), y[b].t()).float()  # (d_model, E)
                    d_out_proj.addcmul_(g1[b, :, None], m)
                    d_gate[b] = (m * wout.float()).sum(1)
                w_gated = wout[None] * g1.to(cdt)[:, :, None]  # (B, d_model, E)
                dy = _bmm(dout, w_gated).transpose(1, 2)
            del y
            if not scan_mod.follows_layout(scan):
                dy = dy.contiguous()
            du, ddt, dA, dB, dC, dD, dz, dbias = torch.ops.dimbench.selective_scan_bwd(
                dy, u, dt, A, B, C, D, z, delta_bias, softplus, scan, states
            )
            del dy, dt, states, z
            ddt = ddt.to(cdt).transpose(1, 2)  # (B, L, E)
            dt_in = x_dbl[..., :dt_rank]
            d_dt_proj = _sum_mm(dt_in, ddt).t()  # (E, R)
            d_dt_in = _mm(ddt, wdt)  # (B, L, R)
            del ddt
            dx_dbl = torch.cat(
                [d_dt_in, dB.transpose(1, 2).to(cdt), dC.transpose(1, 2).to(cdt)], -1
            )
            d_x_proj = _sum_mm(dx_dbl, u.transpose(1, 2))  # (R + 2N, E)
            del u
            du = _addmm_(du.to(cdt).transpose(1, 2), dx_dbl, wx).transpose(1, 2)
            dx, dconv_w, dconv_b = conv.backward(du, x, conv_weight, conv_bias)
            del du, x
            d_norm = (None, None, None)
            if source == FROM_XZ:
                d_first, d_second = dx, dz
            else:  # through in_proj: d hidden = dx^T W_x + dz^T W_z, and W's gradient
                w_x, w_z = w_in.chunk(2, dim=0)
                dx, dz = dx.transpose(1, 2), dz.to(cdt).transpose(1, 2)  # (B, L, E)
                d_hidden = _addmm_(_mm(dx, w_x), dz, w_z)  # (B, L, D)
                d_second = torch.cat([_sum_mm(dx, hidden), _sum_mm(dz, hidden)])
                del dx, dz, hidden
                if source == FROM_STREAM:
                    d_first, *d_norm = _norm_modulate_bwd(d_hidden, n, rstd, a, norm_weight, scale)
                else:
                    d_first = d_hidden

        def like(g, t):
            return None if t is None or g is None else g.to(t.dtype)

        return (
            d_first.to(ctx.in_dtypes[0]),
            d_second.to(ctx.in_dtypes[1]),
            like(dconv_w, conv_weight),
            like(dconv_b, conv_bias),
            like(d_x_proj, x_proj_weight),
            like(d_dt_proj, dt_proj_weight),
            like(d_out_proj, out_proj_weight),
            like(dA, A),
            like(dD, D),
            like(dbias, delta_bias),
            like(d_norm[0], norm_weight),
            like(d_norm[1], shift),
            like(d_norm[2], scale),
            like(d_gate, gate),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def mamba_inner(
    x: Tensor | None,
    z: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    x_proj_weight: Tensor,
    dt_proj_weight: Tensor,
    out_proj_weight: Tensor | None,
    A: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool = True,
    scan_backend: str = "auto",
    conv_backend: str = "auto",
    save_scan: bool = False,
    hidden: Tensor | None = None,
    in_proj_weight: Tensor | None = None,
    stream: Tensor | None = None,
    norm_weight: Tensor | None = None,
    shift: Tensor | None = None,
    scale: Tensor | None = None,
    norm_eps: float = 1e-5,
    gate: Tensor | None = None,
    keep: str = "",
) -> Tensor:
    """conv + SiLU -> x_proj -> dt_proj -> scan (z gate, D skip, delta bias, softplus) ->
    out_proj as one autograd node that recomputes rather than stores (see the module docstring).

    x, z (B, E, L), channel-major or channel-last (e.g. halves of a (B, L, 2E) projection seen
    (B, E, L)); conv_weight (E, K); x_proj_weight (R + 2N, E);
    dt_proj_weight (E, R); out_proj_weight (d_model, E) or None; A (E, N); D, delta_bias (E,).

    Or x = z = None with ``hidden`` (B, L, d_model) and ``in_proj_weight`` (2E, d_model): in_proj
    joins the node, which then keeps ``hidden`` instead of x and z (a quarter of their size at
    expand 2) and recomputes in_proj in backward too; ``keep`` = "x" keeps x (z, half of
    in_proj, is recomputed), "xz" both (no second in_proj).

    Or, for a DiM block, ``stream`` (B, L, d_model), the residual stream, with the pre-norm
    ``norm_weight`` (d_model,), ``shift`` and ``scale`` (B, d_model): the node computes
    hidden = RMSNorm(stream) * norm_weight * (1 + scale) + shift itself and keeps only the stream
    (the norm is recomputed in backward). ``gate`` (B, d_model) scales the output by
    (1 + gate), folded into out_proj's weight. The result equals the unfused sequence.
    """
    if stream is not None:
        source, first = FROM_STREAM, stream
        if hidden is not None or norm_weight is None or shift is None or scale is None:
            raise ValueError("mamba_inner: stream needs norm_weight, shift and scale, not hidden")
    elif hidden is not None:
        source, first = FROM_HIDDEN, hidden
    else:
        source, first = FROM_XZ, x
    if source != FROM_XZ:
        if x is not None or z is not None or in_proj_weight is None:
            raise ValueError("mamba_inner: give x and z, or hidden (or stream) and in_proj_weight")
        batch, length, d_model = first.shape
        dim = in_proj_weight.shape[0] // 2
        if in_proj_weight.shape != (2 * dim, d_model):
            raise ValueError(
                f"mamba_inner: in_proj_weight {tuple(in_proj_weight.shape)} does not fit "
                f"{source} {tuple(first.shape)}"
            )
        second = in_proj_weight
    else:
        if x is None or z is None:
            raise ValueError("mamba_inner: give x and z, or hidden and in_proj_weight")
        batch, dim, length = x.shape
        if z.shape != x.shape:
            raise ValueError(f"mamba_inner: z {tuple(z.shape)} must match x {tuple(x.shape)}")
        second = z
    rank, n = dt_proj_weight.shape[1], A.shape[1]
    if conv_weight.shape[0] != dim or x_proj_weight.shape != (rank + 2 * n, dim):
        raise ValueError(
            f"mamba_inner: conv_weight {tuple(conv_weight.shape)}, x_proj_weight "
            f"{tuple(x_proj_weight.shape)} do not fit (E = {dim}, R = {rank}, N = {n})"
        )
    if gate is not None and out_proj_weight is None:
        raise ValueError("mamba_inner: gate scales out_proj's output; give out_proj_weight")
    return MambaInnerFn.apply(
        first,
        second,
        conv_weight,
        conv_bias,
        x_proj_weight,
        dt_proj_weight,
        out_proj_weight,
        A,
        D,
        delta_bias,
        norm_weight,
        shift,
        scale,
        gate,
        delta_softplus,
        scan_backend,
        conv_backend,
        save_scan,
        source,
        _check_keep(keep),
        norm_eps,
    )


def _check_keep(keep: str) -> str:
    if keep not in ("", "x", "xz"):
        raise ValueError(f"mamba_inner: keep must be '', 'x' or 'xz', got {keep!r}")
    return keep


# ----------------------------------------------------------------------------- mamba's packed form


def packed_bc(x_dbl: Tensor, lo: int, hi: int, bias: Tensor | None, cplx: bool) -> Tensor:
    """B or C from x_proj's (B, L, R + 2N') output columns [lo, hi) as the scan takes it:
    (B, N, L), or for a complex A real pairs (B, N, 2L) (columns (n, re/im) -> (n, (l, re/im)))."""
    M = x_dbl[..., lo:hi]
    if bias is not None:
        M = M + bias.to(M.dtype)
    if not cplx:
        return M.transpose(1, 2)
    batch, length = M.shape[:2]
    return M.reshape(batch, length, -1, 2).permute(0, 2, 1, 3).reshape(batch, -1, 2 * length)


def mamba_inner_packed(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    B: Tensor | None = None,
    C: Tensor | None = None,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    B_proj_bias: Tensor | None = None,
    C_proj_bias: Tensor | None = None,
    delta_softplus: bool = True,
    scan_backend: str = "auto",
    conv_backend: str = "auto",
) -> Tensor:
    """mamba_ssm's ``mamba_inner_fn`` with its arguments: xz (B, 2E, L) (in_proj's output, x
    then z), conv1d_weight (E, 1, K), x_proj_weight (R + 2N', E) with N' = N (2N for a complex
    A), delta_proj_weight (E, R), out_proj_weight (d_model, E), out_proj_bias (d_model,); B, C
    None (from x_proj, plus B_proj_bias / C_proj_bias) or fixed (E, N). Returns (B, L, d_model).

    The case DiM's blocks are (time-varying real B and C, no projection biases) runs the fused
    node (:func:`mamba_inner`, out_proj's bias added after it); every other case runs the same
    sequence as separate ops that autograd differentiates (the scan on any backend that runs it).
    """
    dim = xz.shape[1] // 2
    if xz.dim() != 3 or xz.shape[1] != 2 * dim:
        raise ValueError(f"mamba_inner: xz must be (batch, 2 * dim, length), got {tuple(xz.shape)}")
    if conv1d_weight.dim() != 3 or conv1d_weight.shape[:2] != (dim, 1):
        raise ValueError(
            f"mamba_inner: conv1d_weight must be ({dim}, 1, K), got {tuple(conv1d_weight.shape)}"
        )
    x, z = xz[:, :dim], xz[:, dim:]
    conv_weight = conv1d_weight[:, 0]
    plain = B is None and C is None and B_proj_bias is None and C_proj_bias is None
    if plain and not A.is_complex():
        out = mamba_inner(
            x,
            z,
            conv_weight,
            conv1d_bias,
            x_proj_weight,
            delta_proj_weight,
            out_proj_weight,
            A,
            D,
            delta_bias,
            delta_softplus,
            scan_backend,
            conv_backend,
        )
        return out if out_proj_bias is None else out + out_proj_bias.to(out.dtype)
    rank = delta_proj_weight.shape[1]
    n = A.shape[1] * (2 if A.is_complex() else 1)  # x_proj's columns per B or C
    u = causal_conv1d(x, conv_weight, conv1d_bias, "silu", backend=conv_backend)
    x_dbl = _matmul_weight(u.transpose(1, 2), x_proj_weight)  # (B, L, R + 2N')
    dt = _weight_matmul(delta_proj_weight, x_dbl[..., :rank].transpose(1, 2))  # (B, E, L)
    if B is None:
        B = packed_bc(x_dbl, rank, rank + n, B_proj_bias, A.is_complex())
    if C is None:
        C = packed_bc(x_dbl, x_dbl.shape[-1] - n, x_dbl.shape[-1], C_proj_bias, A.is_complex())
    y = selective_scan(
        u, dt, A, B, C, D, z, delta_bias, delta_softplus, backend=scan_backend
    )  # (B, E, L)
    return torch.nn.functional.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
