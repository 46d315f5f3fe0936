"""Selective scan (Mamba-1) with interchangeable backends behind one torch custom op.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
backend="auto")`` has mamba_ssm's ``selective_scan_fn`` shapes and semantics:
u, delta, z (B, D, L); A (D, N) real; B, C (B, N, L) or (B, G, N, L); D, delta_bias (D,).

Layouts: u, delta, z may be any strided views. The ``cpu`` backend reads channel-last ones
(``(B, L, D).transpose(1, 2)``, a projection's output) in place as well as channel-major ones and
returns y (and du, ddelta, dz) in u's layout (:mod:`dimbench.ops.layout`); the other backends
return contiguous (B, D, L) tensors.

Dtypes (every backend): the output is in u's dtype and each gradient in its input's dtype; the
state and the sums are float32 (float64 for float64 inputs on ``ref``). What a backend reads and
writes in between is its own affair: the ``cpu`` kernel works on bfloat16 activations directly
when u, delta and z are all bfloat16 (see ``scan_cpu``), so bf16 autocast pays no conversion
passes around the scan.

A backend is a ``ScanBackend`` record (:mod:`dimbench.ops.backends`: name, devices, dtypes,
probe, priority, forward, plus the backward, the saved states' shapes and the output layout)
that its module registers with ``backends.register``; the module is imported by
``dimbench/ops/__init__.py`` (scan_cpu, scan_mamba and scan_triton are written so).

Every backend goes through ``dimbench::selective_scan`` (forward) and
``dimbench::selective_scan_bwd`` (backward), two ``torch.library`` custom ops with fake
implementations and FLOP formulas, so ``FlopCounterMode`` counts the scan on any device,
``meta`` included, and ``torch.compile`` treats it as one opaque call.

FLOP formula (one multiply-add = 2 FLOPs, as torch.utils.flop_counter counts):
    forward  = 9*B*L*D*N          recurrence: exp(delta*A), the state update, <C, x>
                                  (the figure Mamba's authors give, used by Vim/ZigMa/VMamba)
             + 2*B*D*L            if D is given (D*u and the add)
             + 5*B*D*L            if z is given (silu(z) = z*sigmoid(z): exp, add, divide,
                                  multiply; then the multiply with y)
             + B*D*L              if delta_bias is given
             + 2*B*D*L            if delta_softplus (exp and log1p)
    backward = 2 * forward        (the convention torch uses for matmul and attention)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import register_flop_formula

from dimbench.ops import backends, scan_ref
from dimbench.ops import layout as lay

Tensor = torch.Tensor


@dataclass(frozen=True, kw_only=True)
class ScanBackend(backends.Backend):
    """A scan implementation: ``run`` (the forward) returns ``[out, *saved]``, ``backward`` gets
    the saved tensors back; ``saved_shapes(u, A, z)`` lists their (shape, dtype)."""

    op: str = "scan"
    backward: Callable[..., list[Tensor | None]]
    saved_shapes: Callable[..., list[tuple[tuple[int, ...], torch.dtype]]]
    # the layout of the output and of du, ddelta, dz for a given u; None: contiguous (B, D, L)
    output_layout: Callable[[Tensor], str] | None = None


def _backend(name: str) -> ScanBackend:
    return backends.get("scan", name)


def scan_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends usable on this machine (for ``device``'s type when given), fastest first."""
    return backends.available("scan", device)


def in_input_dtypes(grads: Sequence[Tensor | None], *inputs: Tensor | None) -> list[Tensor | None]:
    """A backward's gradients of (u, delta, A, B, C, D, z, delta_bias), each in its input's
    dtype and None where the input is None (what ``dimbench::selective_scan_bwd`` returns)."""
    return [None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs, strict=True)]


def follows_layout(backend: str) -> bool:
    """Whether ``backend`` reads channel-last u, delta, z, grad_out in place and returns y, du,
    ddelta, dz in u's layout (else it returns contiguous (B, D, L) tensors)."""
    return _backend(backend).output_layout is not None


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("dimbench::selective_scan", mutates_args=())
def _scan_fwd_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
    save_for_backward: bool,
) -> list[Tensor]:
    return _backend(backend).run(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_for_backward
    )


def _activation_like(u: Tensor, backend: str) -> Tensor:
    """What ``backend`` returns for an output or activation gradient of a scan of ``u``."""
    layout = _backend(backend).output_layout
    return lay.new_empty(u, layout(u) if layout is not None else lay.CHANNEL_MAJOR)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, save_for_backward):
    outs = [_activation_like(u, backend)]
    if save_for_backward:
        shapes = _backend(backend).saved_shapes(u, A, z)
        outs += [u.new_empty(shape, dtype=dt) for shape, dt in shapes]
    return outs


@torch.library.custom_op("dimbench::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    grad_out: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    backend: str,
    saved: Sequence[Tensor],
) -> list[Tensor]:
    grads = _backend(backend).backward(
        grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, list(saved)
    )
    # custom ops cannot return None: an empty tensor stands for "no gradient"
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, saved):
    def like(t):
        return t.new_empty(t.shape) if t is not None else u.new_empty(0)

    def activation(t):  # the backend's layout, in the input's dtype
        return _activation_like(u, backend).to(t.dtype) if t is not None else u.new_empty(0)

    return [
        activation(u),
        activation(delta),
        like(A),
        like(B),
        like(C),
        like(D),
        activation(z),
        like(delta_bias),
    ]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, _save = inputs
    # the saved states are not differentiable: without this autograd would hand the backward a
    # materialised zero gradient for them (a fresh tensor a quarter of u's size, every call)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend
    ctx.has = (D is not None, z is not None, delta_bias is not None)
    ctx.save_for_backward(
        u, delta, A, B, C, *(t for t in (D, z, delta_bias) if t is not None), *output[1:]
    )


def _backward(ctx, grad_outputs):
    grad_out = grad_outputs[0]
    if grad_out is None:  # only reachable when out itself got no gradient
        return (None,) * 11
    saved = list(ctx.saved_tensors)
    u, delta, A, B, C = saved[:5]
    rest = saved[5:]
    opt = []
    for present in ctx.has:
        opt.append(rest.pop(0) if present else None)
    D, z, delta_bias = opt
    if _backend(ctx.backend).output_layout is None:
        grad_out = grad_out.contiguous()
    grads = _scan_bwd_op(
        grad_out,
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        ctx.delta_softplus,
        ctx.backend,
        rest,
    )
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    grads = [None if t is None else g for g, t in zip(grads, inputs, strict=True)]
    return (*grads, None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def scan_flops(
    u_shape: Sequence[int],
    A_shape: Sequence[int],
    has_D: bool,
    has_z: bool,
    has_delta_bias: bool,
    delta_softplus: bool,
) -> int:
    """Forward FLOPs of one selective scan (see the module docstring for the formula)."""
    batch, dim, length = u_shape
    n = A_shape[1]
    bdl = batch * dim * length
    flops = 9 * bdl * n
    flops += 2 * bdl if has_D else 0
    flops += 5 * bdl if has_z else 0
    flops += bdl if has_delta_bias else 0
    flops += 2 * bdl if delta_softplus else 0
    return flops


@register_flop_formula(torch.ops.dimbench.selective_scan)
def _scan_fwd_flop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, **kwargs) -> int:
    return scan_flops(u, A, D is not None, z is not None, delta_bias is not None, delta_softplus)


@register_flop_formula(torch.ops.dimbench.selective_scan_bwd)
def _scan_bwd_flop(
    grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, **kwargs
) -> int:
    fwd = scan_flops(u, A, D is not None, z is not None, delta_bias is not None, delta_softplus)
    return 2 * fwd


# ----------------------------------------------------------------------------- public API


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be real (dim, d_state) = ({dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok3 = M.dim() == 3 and tuple(M.shape) == (batch, n, length)
        ok4 = (
            M.dim() == 4
            and M.shape[0] == batch
            and M.shape[2:] == (n, length)
            and dim % M.shape[1] == 0
        )
        if not (ok3 or ok4):
            raise ValueError(
                f"{name} must be (batch, N, L) = ({batch}, {n}, {length}) or (batch, G, N, L), "
                f"got {tuple(M.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"{name} must be ({dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z {tuple(z.shape)} must match u {tuple(u.shape)}")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Mamba-1 selective scan; returns (B, D, L) in ``u``'s dtype. Differentiable on every backend.

    ``backend``: ``"auto"`` (fastest available for the tensors' device) or one of
    :func:`scan_backends`.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = backends.resolve("scan", backend, u.device, u.dtype)
    inputs = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    outs = _scan_fwd_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, name, save)
    return outs[0]


# ----------------------------------------------------------------------------- ref backend


def _ref_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
    return [scan_ref.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)]


def _ref_backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    return scan_ref.selective_scan_ref_bwd(
        grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus
    )


backends.register(
    ScanBackend(
        name="ref",
        device_types=("cpu", "cuda", backends.META),
        priority=0,
        run=_ref_forward,
        backward=_ref_backward,
        saved_shapes=lambda u, A, z: [],
    )
)
