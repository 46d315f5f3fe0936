"""Selective scan (Mamba-1) with interchangeable backends behind one torch custom op.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, backend="auto")`` has mamba_ssm's ``selective_scan_fn`` shapes and
semantics (:mod:`dimbench.ops.scan_ref` is the twin): u, delta, z (B, D, L); A (D, N) real or
complex; B, C time-varying (B, N, L) or grouped (B, G, N, L), any D and any G dividing D, or
fixed (D, N); with a complex A, time-varying B, C are complex or real pairs (..., N, 2L) and
fixed ones complex; D, delta_bias (D,). ``return_last_state`` also returns the state after the
last step, (B, D, N) (float32, complex64 for a complex A; float64 / complex128 for float64
inputs on ``ref``), differentiable on every backend (mamba's CUDA function drops its gradient;
here it flows into every input).

Backends and cases: each ``ScanBackend`` lists the cases beyond the real, time-varying scan
that it runs (``features``: ``last_state``, ``fixed_bc``, ``complex``). ``auto`` picks the
fastest backend that runs the call's case (``cpu`` runs all but complex A; complex A runs on
``ref``); a backend named for a case it lacks is a ``BackendError`` (one line).

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
                                  (the figure Mamba's authors give, used by Vim/ZigMa/VMamba);
                                  the same for fixed B or C (the same arithmetic per element,
                                  B, C read from a (D, N) matrix) and for grouped ones;
                                  36*B*L*D*N for a complex A (N complex states: each real
                                  multiply-add of the recurrence becomes a complex one, 4x)
             + 2*B*D*L            if D is given (D*u and the add)
             + 5*B*D*L            if z is given (silu(z) = z*sigmoid(z): exp, add, divide,
                                  multiply; then the multiply with y)
             + B*D*L              if delta_bias is given
             + 2*B*D*L            if delta_softplus (exp and log1p)
    backward = 2 * forward        (the convention torch uses for matmul and attention)
The last state costs nothing more (it is the recurrence's final x).
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
    the saved tensors back; ``saved_shapes(u, A, z, B=, C=)`` lists their (shape, dtype)."""

    op: str = "scan"
    backward: Callable[..., list[Tensor | None]]
    saved_shapes: Callable[..., list[tuple[tuple[int, ...], torch.dtype]]]
    # the cases beyond the real, time-varying scan it runs (FEATURES): with "last_state",
    # run(..., last_state=True) returns [out, last, *saved] and backward takes dlast=
    features: frozenset[str] = frozenset()
    # the layout of the output and of du, ddelta, dz for a given u; None: contiguous (B, D, L)
    output_layout: Callable[[Tensor], str] | None = None


FEATURES = ("last_state", "fixed_bc", "complex")


def _backend(name: str) -> ScanBackend:
    return backends.get("scan", name)


def features_of(A: Tensor, B: Tensor, C: Tensor, return_last_state: bool) -> frozenset[str]:
    """The cases of FEATURES a scan with these A, B, C needs its backend to run."""
    needed = {"last_state"} if return_last_state else set()
    if B.dim() == 2 or C.dim() == 2:
        needed.add("fixed_bc")
    if A.is_complex():
        needed.add("complex")
    return frozenset(needed)


def resolve(
    backend: str, device: torch.device | str, dtype: torch.dtype, needed: frozenset[str]
) -> str:
    """The backend that runs a scan needing ``needed``: ``backend`` when it runs them (else a
    BackendError), or for ``auto`` the fastest one here that does."""
    name = backends.resolve("scan", backend, device, dtype)
    if needed <= _backend(name).features:
        return name
    missing = ", ".join(sorted(needed - _backend(name).features))
    if backend != "auto":
        raise backends.BackendError(f"scan backend {name!r} does not run {missing}")
    for other in scan_backends(device):
        if needed <= _backend(other).features:
            return other
    raise backends.BackendError(f"no scan backend here runs {missing}")


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
    return_last_state: bool = False,
) -> list[Tensor]:
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_for_backward)
    if return_last_state:
        return _backend(backend).run(*args, last_state=True)
    return _backend(backend).run(*args)


def _activation_like(u: Tensor, backend: str) -> Tensor:
    """What ``backend`` returns for an output or activation gradient of a scan of ``u``."""
    layout = _backend(backend).output_layout
    return lay.new_empty(u, layout(u) if layout is not None else lay.CHANNEL_MAJOR)


def last_state_dtype(u: Tensor, A: Tensor, backend: str) -> torch.dtype:
    """The last state's dtype: the reference's state dtype on ``ref``, float32 on a kernel."""
    if backend == "ref":
        return scan_ref.acc_dtype(u, A)
    return torch.float32


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, save_for_backward, last=False):
    outs = [_activation_like(u, backend)]
    if last:
        dt = last_state_dtype(u, A, backend)
        outs.append(u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=dt))
    if save_for_backward:
        shapes = _backend(backend).saved_shapes(u, A, z, B=B, C=C)
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
    grad_last: Tensor | None = None,
) -> list[Tensor]:
    args = (grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, list(saved))
    if grad_last is not None:
        grads = _backend(backend).backward(*args, dlast=grad_last)
    else:
        grads = _backend(backend).backward(*args)
    # custom ops cannot return None: an empty tensor stands for "no gradient"
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_bwd_op.register_fake
def _(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, saved, gl=None):
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
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, _save, *last = inputs
    ctx.n_last = int(bool(last and last[0]))  # whether output[1] is the last state
    # the saved states are not differentiable: without this autograd would hand the backward a
    # materialised zero gradient for them (a fresh tensor a quarter of u's size, every call)
    ctx.mark_non_differentiable(*output[1 + ctx.n_last :])
    ctx.set_materialize_grads(False)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend
    ctx.has = (D is not None, z is not None, delta_bias is not None)
    ctx.save_for_backward(
        u,
        delta,
        A,
        B,
        C,
        *(t for t in (D, z, delta_bias) if t is not None),
        *output[1 + ctx.n_last :],
    )


def _backward(ctx, grad_outputs):
    grad_out = grad_outputs[0]
    grad_last = grad_outputs[1] if ctx.n_last else None
    if grad_out is None and grad_last is None:  # neither output got a gradient
        return (None,) * 12
    saved = list(ctx.saved_tensors)
    u, delta, A, B, C = saved[:5]
    rest = saved[5:]
    opt = []
    for present in ctx.has:
        opt.append(rest.pop(0) if present else None)
    D, z, delta_bias = opt
    if grad_out is None:  # only the last state got a gradient
        grad_out = torch.zeros(u.shape, dtype=u.dtype)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():  # autograd through the reference (only ref runs complex A): a custom
        # op's implementation cannot do that, it runs below autograd
        grads = _ref_autograd_backward(grad_out, grad_last, *inputs, ctx.delta_softplus)
        return (*grads, None, None, None, None)
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
        grad_last,
    )
    grads = [None if t is None else g for g, t in zip(grads, inputs, strict=True)]
    return (*grads, None, None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def scan_flops(
    u_shape: Sequence[int],
    A_shape: Sequence[int],
    has_D: bool,
    has_z: bool,
    has_delta_bias: bool,
    delta_softplus: bool,
    complex_A: bool = False,
) -> int:
    """Forward FLOPs of one selective scan (see the module docstring for the formula)."""
    batch, dim, length = u_shape
    n = A_shape[1]
    bdl = batch * dim * length
    flops = (36 if complex_A else 9) * bdl * n
    flops += 2 * bdl if has_D else 0
    flops += 5 * bdl if has_z else 0
    flops += bdl if has_delta_bias else 0
    flops += 2 * bdl if delta_softplus else 0
    return flops


def _flops_of(u: Tensor, A: Tensor, D, z, delta_bias, delta_softplus: bool) -> int:
    # raw tensors (get_raw): the formula needs A's dtype, not only its shape
    has = (D is not None, z is not None, delta_bias is not None)
    return scan_flops(tuple(u.shape), tuple(A.shape), *has, delta_softplus, A.is_complex())


@register_flop_formula(torch.ops.dimbench.selective_scan, get_raw=True)
def _scan_fwd_flop(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, **kwargs) -> int:
    return _flops_of(u, A, D, z, delta_bias, delta_softplus)


@register_flop_formula(torch.ops.dimbench.selective_scan_bwd, get_raw=True)
def _scan_bwd_flop(
    grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, *args, **kwargs
) -> int:
    return 2 * _flops_of(u, A, D, z, delta_bias, delta_softplus)


# ----------------------------------------------------------------------------- public API


def _check_bc(name: str, M: Tensor, batch: int, dim: int, n: int, length: int, cplx: bool):
    if M.dim() == 2:  # fixed
        if tuple(M.shape) != (dim, n) or (M.is_complex() and not cplx):
            shape = tuple(M.shape)
            raise ValueError(f"a fixed {name} must be (dim, N) = ({dim}, {n}), got {shape}")
        return
    if M.is_complex() and not cplx:
        raise ValueError(f"{name} is complex but A is real")
    steps = 2 * length if cplx and not M.is_complex() else length  # real pairs
    ok3 = M.dim() == 3 and tuple(M.shape) == (batch, n, steps)
    ok4 = M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (n, steps)
    if ok4 and dim % M.shape[1]:
        raise ValueError(f"{name}'s group count {M.shape[1]} does not divide dim {dim}")
    if not (ok3 or ok4):
        raise ValueError(
            f"{name} must be (batch, N, L) = ({batch}, {n}, {steps}), (batch, G, N, L) or "
            f"(dim, N), got {tuple(M.shape)}"
        )


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, d_state) = ({dim}, N), got {tuple(A.shape)}")
    for name, M in (("B", B), ("C", C)):
        _check_bc(name, M, batch, dim, A.shape[1], length, A.is_complex())
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"B and C must have one group count, got {B.shape[1]} and {C.shape[1]}")
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
    return_last_state: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-1 selective scan; returns (B, D, L) in ``u``'s dtype, and with
    ``return_last_state`` also the final state (B, D, N). Differentiable on every backend.

    ``backend``: ``"auto"`` (the fastest one here that runs the case) or one of
    :func:`scan_backends`.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    needed = features_of(A, B, C, return_last_state)
    name = resolve(backend, u.device, u.dtype, needed)
    inputs = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, name, save)
    if not return_last_state:
        return _scan_fwd_op(*args)[0]
    outs = _scan_fwd_op(*args, True)
    return outs[0], outs[1]


# ----------------------------------------------------------------------------- ref backend


def _ref_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save, last_state=False):
    res = scan_ref.selective_scan_ref(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=last_state
    )
    return list(res) if last_state else [res]


def _ref_autograd_backward(grad_out, grad_last, *inputs_and_flag):
    """Gradients by autograd through the reference (complex A: the route mamba's tests take)."""
    *inputs, delta_softplus = inputs_and_flag
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        out, last = scan_ref.selective_scan_ref(*leaves, delta_softplus, return_last_state=True)
        outs, grads_in = [out], [grad_out]
        if grad_last is not None:
            outs.append(last)
            grads_in.append(grad_last)
        present = [t for t in leaves if t is not None]
        got = iter(torch.autograd.grad(outs, present, grads_in, allow_unused=True))
        grads = [None if t is None else next(got) for t in leaves]
    return [
        None if t is None else (torch.zeros_like(t) if g is None else g)
        for g, t in zip(grads, inputs, strict=True)
    ]


def _ref_backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, dlast=None):
    return scan_ref.selective_scan_ref_bwd(
        grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, grad_last=dlast
    )


backends.register(
    ScanBackend(
        name="ref",
        device_types=("cpu", "cuda", backends.META),
        priority=0,
        run=_ref_forward,
        backward=_ref_backward,
        saved_shapes=lambda u, A, z, B=None, C=None: [],
        features=frozenset(FEATURES),
    )
)
