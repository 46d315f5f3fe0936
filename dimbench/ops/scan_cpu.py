"""The "cpu" selective-scan backend: a vectorised C++ kernel (csrc/selective_scan.cpp).

The kernel is plain C++ with no torch headers, so it compiles in about two seconds with the
system compiler at first use (``-O3 -march=native``) and is cached under
``$DIMBENCH_CACHE_DIR`` (default ``~/.cache/dimbench``), keyed by source, compiler, flags and
CPU. It is called through ctypes, which releases the GIL, so units of (batch, 16 channels) are
spread over ``torch.get_num_threads()`` Python threads.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from dimbench.ops import cbuild, scan
from dimbench.ops.cbuild import KernelUnavailable

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cpp"
LANES = 16  # channels per vector in the kernel
CHUNK = 64  # time steps between the states the forward saves for the backward
MIN_UNITS_PER_THREAD = 2  # below this a second thread costs more than it saves

Tensor = torch.Tensor


def build() -> Path:
    """Compile the kernel if it is not cached yet; return the shared library's path."""
    return cbuild.build(SOURCE)


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    common = [i64] * 5 + [ptr] * 8 + [i32]
    lib.dimbench_scan_fwd.argtypes = common + [ptr, ptr, i64, i64]
    lib.dimbench_scan_fwd.restype = None
    lib.dimbench_scan_bwd.argtypes = common + [ptr] * 10 + [i64, i64]
    lib.dimbench_scan_bwd.restype = None
    assert (lib.dimbench_scan_lanes(), lib.dimbench_scan_chunk()) == (LANES, CHUNK)
    return lib


def _probe() -> str | None:
    try:
        _lib()
    except (KernelUnavailable, OSError) as e:
        return str(e).splitlines()[0]
    return None


def _ranges(units: int) -> list[tuple[int, int]]:
    return cbuild.ranges(units, MIN_UNITS_PER_THREAD)


_run = cbuild.run


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _as_groups(M: Tensor) -> Tensor:
    return M.unsqueeze(1) if M.dim() == 3 else M


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    batch, dim, length = u.shape
    Bg, Cg = _as_groups(B), _as_groups(C)
    groups = Bg.shape[1]
    if Cg.shape[1] != groups:
        raise ValueError("the cpu scan backend needs B and C with the same number of groups")
    if groups > 1 and (dim // groups) % LANES:
        raise ValueError(f"the cpu scan backend needs dim/groups to be a multiple of {LANES}")
    max_n = _lib().dimbench_scan_max_dstate()
    if A.shape[1] > max_n:
        raise ValueError(f"the cpu scan backend supports d_state <= {max_n}")
    Bt, Ct = (M.to(torch.float32).transpose(-1, -2).contiguous() for M in (Bg, Cg))
    t = [_f32(x) for x in (u, delta, A)] + [Bt, Ct] + [_f32(x) for x in (D, z, delta_bias)]
    shape = (batch, dim, length, A.shape[1], groups)
    return shape, t


def _nchunks(length: int) -> int:
    return (length + CHUNK - 1) // CHUNK


def saved_shapes(u: Tensor, A: Tensor, z: Tensor | None):
    batch, dim, length = u.shape
    ncb = (dim + LANES - 1) // LANES
    return [((batch, ncb, _nchunks(length), A.shape[1], LANES), torch.float32)]


def thread_ranges(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The (batch, 16-channel) units of a scan of ``shape`` split over this process's threads."""
    batch, dim = shape[:2]
    return _ranges(batch * ((dim + LANES - 1) // LANES))


def launch_forward(shape, t, delta_softplus, out, ckpt, ranges) -> None:
    """Run the forward kernel on prepared inputs ``t`` (see ``_prepare``) into ``out``/``ckpt``."""
    head = [*shape, *map(_ptr, t), int(delta_softplus)]
    _run(
        _lib().dimbench_scan_fwd,
        ranges,
        lambda i, lo, hi: (*head, out.data_ptr(), _ptr(ckpt), lo, hi),
    )


def launch_backward(shape, t, delta_softplus, dout, ckpt, grads, accumulators, ranges) -> None:
    """Run the backward kernel. ``grads`` = (du, ddelta, dz or None), written in full;
    ``accumulators`` = (dA, dD, ddelta_bias, dB, dC), each stacked per thread and zeroed."""
    head = [*shape, *map(_ptr, t), int(delta_softplus), dout.data_ptr(), ckpt.data_ptr()]
    grad_ptrs = [_ptr(g) for g in grads]
    _run(
        _lib().dimbench_scan_bwd,
        ranges,
        lambda i, lo, hi: (*head, *grad_ptrs, *(a[i].data_ptr() for a in accumulators), lo, hi),
    )


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
    shape, t = _prepare(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = shape[:3]
    out = torch.empty((batch, dim, length), dtype=torch.float32)
    ckpt = torch.empty(saved_shapes(u, A, z)[0][0], dtype=torch.float32) if save else None
    if length:
        launch_forward(shape, t, delta_softplus, out, ckpt, thread_ranges(shape))
    outs = [out.to(u.dtype)]
    if save:
        outs.append(ckpt)
    return outs


def backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    shape, t = _prepare(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length, n, groups = shape
    (ckpt,) = saved
    f32 = {"dtype": torch.float32}
    # the kernel writes every element of these
    du = torch.empty((batch, dim, length), **f32)
    ddelta = torch.empty_like(du)
    dz = torch.empty_like(du) if z is not None else None
    ranges = thread_ranges(shape)
    nt = len(ranges)
    dA = torch.zeros((nt, dim, n), **f32)
    dD = torch.zeros((nt, dim), **f32)
    dbias = torch.zeros((nt, dim), **f32)
    dB = torch.zeros((nt, batch, groups, n, length), **f32)
    dC = torch.zeros_like(dB)
    if length:
        launch_backward(
            shape,
            t,
            delta_softplus,
            _f32(grad_out),
            ckpt,
            (du, ddelta, dz),
            (dA, dD, dbias, dB, dC),
            ranges,
        )
    dB, dC = dB.sum(0), dC.sum(0)
    if B.dim() == 3:
        dB, dC = dB.squeeze(1), dC.squeeze(1)
    return [
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz.to(z.dtype) if z is not None else None,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    ]


scan.register_backend(
    scan.ScanBackend(
        name="cpu",
        device_types=("cpu",),
        priority=10,
        probe=_probe,
        forward=forward,
        backward=backward,
        saved_shapes=saved_shapes,
    )
)
