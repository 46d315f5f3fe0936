"""The "mamba_ssm" selective-scan backend: mamba_ssm's CUDA kernels, where they are installed.

Calls the compiled extension ``selective_scan_cuda`` the way ``mamba_ssm``'s
``SelectiveScanFn`` does: ``fwd`` returns ``(out, x, [out_z])`` with x the states at every
2048-th step (B, D, n_chunks, 2N) float32, and ``bwd`` takes them back with the pre-gate ``out``.
The kernels want u, delta, z, B, C in one dtype and A, D, delta_bias in float32; this wrapper
casts to that and casts the gradients back. Recent mamba_ssm releases added a trailing
``cu_seqlens`` argument to both calls; older ones reject it. Both are handled.
"""

from __future__ import annotations

import functools

import torch

from dimbench.ops import backends, scan

Tensor = torch.Tensor

PRIORITY = 30  # the reference implementation: auto prefers it wherever it is installed
KERNEL_CHUNK = 2048  # steps between the states selective_scan_cuda saves


@functools.cache
def _ext():
    import selective_scan_cuda  # the extension mamba_ssm builds

    return selective_scan_cuda


def _probe() -> str | None:
    try:
        _ext()
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"mamba_ssm's selective_scan_cuda is not importable ({first})"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


_takes_cu_seqlens: dict[str, bool] = {}


def _call(name: str, *args):
    """``selective_scan_cuda.<name>(*args[, cu_seqlens=None])``, whichever arity it has."""
    fn = getattr(_ext(), name)
    if name in _takes_cu_seqlens:
        return fn(*args, None) if _takes_cu_seqlens[name] else fn(*args)
    try:
        result = fn(*args, None)
        _takes_cu_seqlens[name] = True
    except TypeError:  # pybind11: incompatible function arguments
        result = fn(*args)
        _takes_cu_seqlens[name] = False
    return result


def saved_shapes(
    u: Tensor, A: Tensor, z: Tensor | None, B: Tensor | None = None, C: Tensor | None = None
):
    """The saved states of a scan of u (B, C: not needed here, the protocol passes them)."""
    batch, dim, length = u.shape
    n_chunks = (length + KERNEL_CHUNK - 1) // KERNEL_CHUNK
    shapes = [((batch, dim, n_chunks, 2 * A.shape[1]), torch.float32)]
    if z is not None:
        shapes.append(((batch, dim, length), u.dtype))  # the output before the z gate
    return shapes


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    itype = u.dtype

    def inp(t):
        return None if t is None else t.to(itype).contiguous()

    def weight(t):
        return None if t is None else t.to(torch.float32).contiguous()

    Bg = B.unsqueeze(1) if B.dim() == 3 else B
    Cg = C.unsqueeze(1) if C.dim() == 3 else C
    return (
        u.contiguous(),
        inp(delta),
        weight(A),
        inp(Bg),
        inp(Cg),
        weight(D),
        inp(z),
        weight(delta_bias),
    )


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
    args = _prepare(u, delta, A, B, C, D, z, delta_bias)
    out, x, *rest = _call("fwd", *args, bool(delta_softplus))
    result = rest[0] if z is not None else out
    if not save:
        return [result]
    return [result, x] + ([out] if z is not None else [])


def backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    args = _prepare(u, delta, A, B, C, D, z, delta_bias)
    x = saved[0]
    out = saved[1] if z is not None else None
    dout = grad_out.to(u.dtype).contiguous()
    du, ddelta, dA, dB, dC, dD, dbias, *rest = _call(
        "bwd", *args, dout, x, out, None, bool(delta_softplus), False
    )
    if B.dim() == 3:
        dB = dB.squeeze(1)
    if C.dim() == 3:
        dC = dC.squeeze(1)
    grads = [du, ddelta, dA, dB, dC, dD, rest[0] if rest else None, dbias]
    return scan.in_input_dtypes(grads, u, delta, A, B, C, D, z, delta_bias)


backends.register(
    scan.ScanBackend(
        name="mamba_ssm",
        device_types=("cuda",),
        priority=PRIORITY,
        probe=_probe,
        run=forward,
        backward=backward,
        saved_shapes=saved_shapes,
    )
)
