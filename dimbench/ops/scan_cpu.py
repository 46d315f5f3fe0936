"""The "cpu" selective-scan backend: a vectorised C++ kernel (csrc/selective_scan.cpp).

The kernel is plain C++ with no torch headers, built and threaded by ``ops/cbuild.py``:
compiled in a few seconds with the system compiler at first use (``-O3 -march=native``),
cached under ``$DIMBENCH_CACHE_DIR`` (default ``~/.cache/dimbench``), called through ctypes
(which releases the GIL) with units of (batch, group, block of 16 channels; 8 on AVX2 without
AVX-512) spread over ``torch.get_num_threads()`` Python threads.

Dtypes: u, delta and z are read, and the output (and in the backward grad_out, du, ddelta,
dz) written, in bfloat16 when all three are bfloat16 (and B and C are time-varying), else in
float32 (other dtypes are converted first); the state and every sum are float32. B and C are
read as float32 with the state dimension contiguous: in place when they are already (a
time-major slice of x_proj's output, say), else through one small copy; a fixed (D, N) one is
read per lane (each channel its own row) at every step. A, D and delta_bias are float32. The
output comes back in u's dtype and each gradient in its input's dtype; the last state
(``return_last_state``) is float32 (B, D, N), written by the forward kernel, and its gradient
enters the backward kernel's reverse pass at the last step.

Layouts (:mod:`dimbench.ops.layout`): u decides. Channel-major u (time contiguous, any batch
and channel strides: channel slices of one (B, 2E, L) projection) or channel-last u (channels
contiguous, any batch and time strides: ``(B, L, E).transpose(1, 2)``, or a channel slice of a
(B, L, 2E) projection, as the fused mixer passes them) is read in place; delta, z and grad_out
are read in place where they have u's layout and copied into it where not. The output and
du, ddelta, dz come back in u's layout (dense: channel-last ones are (B, L, E) tensors seen
transposed); u in neither layout is copied to channel-major first.

Denormals: every kernel call runs with flush-to-zero and denormals-are-zero set in its own
thread and restores the caller's mode (decays exp(delta * A) drive states subnormal, which costs
some CPUs an order of magnitude).

Memory: outputs and gradients are ``torch.empty`` tensors (the kernel writes every element) on
transparent huge pages where the OS offers them (:mod:`dimbench.ops.hugepages`); the forward
saves only the state at every 128th step (an eighth of a float32 u at N = 16), which
the backward recomputes from.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from dimbench.ops import backends, cbuild, hugepages, scan
from dimbench.ops import layout as lay
from dimbench.ops.cbuild import KernelUnavailable

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cpp"
CHUNK = 128  # time steps between the states the forward saves for the backward
MIN_UNITS_PER_THREAD = 2  # below this a second thread costs more than it saves

Tensor = torch.Tensor


def build() -> Path:
    """Compile the kernel if it is not cached yet; return the shared library's path."""
    return cbuild.build(SOURCE)


ACTIVATIONS = "u delta z dout out du ddelta dz".split()  # (B, D, L), one layout for all


class ScanArgs(ctypes.Structure):
    """The kernel's ``struct ScanArgs`` (same fields, same order)."""

    _fields_ = (
        [
            (name, ctypes.c_int64)
            for name in "batch dim length dstate groups B_fixed C_fixed".split()
            + "bf16 softplus channel_last".split()
        ]
        + [(f"{name}_s", ctypes.c_int64 * 3) for name in ACTIVATIONS]
        + [(name, ctypes.c_int64) for name in "B_sb B_sg B_st C_sb C_sg C_st".split()]
        + [
            (name, ctypes.c_void_p)
            for name in "u delta z dout A B C D delta_bias out du ddelta dz ckpt last dlast".split()
        ]
    )


ABI = 4  # the kernel's ABI constant: ScanArgs and the entry points as declared here


def load(path: str | Path) -> ctypes.CDLL:
    """Load a compiled kernel and declare its entry points (checks that it matches this file)."""
    lib = ctypes.CDLL(str(path))
    i64, ptr, args = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ScanArgs)
    signatures = {
        "dimbench_scan_fwd": ([args, i64, i64], None),
        "dimbench_scan_bwd": ([args, ptr, i64, i64], None),
        "dimbench_scan_bwd_reduce": ([args, ptr, i64, ptr, ptr, ptr, ptr, i64, ptr, i64], None),
        "dimbench_scan_partial_size": ([args], i64),
        "dimbench_fp_control": ([], ctypes.c_uint64),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, restype
    got = (lib.dimbench_scan_abi(), lib.dimbench_scan_chunk())
    assert got == (ABI, CHUNK), f"kernel (ABI, CHUNK) {got} vs wrapper {(ABI, CHUNK)}"
    return lib


@functools.cache
def _lib() -> ctypes.CDLL:
    return load(build())


def lanes() -> int:
    """Channels per vector in the built kernel: 16 (AVX-512, Arm, portable) or 8 (AVX2 without
    AVX-512); 16 where it cannot be built (the meta device's shapes)."""
    try:
        return _lib().dimbench_scan_lanes()
    except (KernelUnavailable, OSError):
        return 16


def _probe() -> str | None:
    try:
        _lib()
    except (KernelUnavailable, OSError) as e:
        return str(e).splitlines()[0]
    return None


def fp_control() -> int:
    """The calling thread's floating-point control word as the kernel reads it (MXCSR on x86,
    FPCR on Arm, 0 elsewhere): the kernels set the flush-to-zero bits and restore this."""
    return _lib().dimbench_fp_control()


def flushes_denormals() -> bool:
    """Whether the kernels run with denormals flushed on this CPU (x86 and Arm)."""
    return bool(_lib().dimbench_scan_flushes_denormals())


def _ranges(units: int) -> list[tuple[int, int]]:
    return cbuild.ranges(units, MIN_UNITS_PER_THREAD)


_run = cbuild.run


def _nchunks(length: int) -> int:
    return (length + CHUNK - 1) // CHUNK


def groups_of(B: Tensor, C: Tensor) -> int:
    """The group count of a scan's B and C (1 for (B, N, L) and fixed (D, N) ones)."""
    return max(M.shape[1] if M.dim() == 4 else 1 for M in (B, C))


def units_per_batch(dim: int, groups: int) -> int:
    """Work units per batch element: each group's channels in blocks of up to :func:`lanes` (a
    unit never straddles a group; the last block of a group holds its tail lanes)."""
    w = lanes()
    return groups * ((dim // groups + w - 1) // w)


def saved_shapes(
    u: Tensor, A: Tensor, z: Tensor | None, B: Tensor | None = None, C: Tensor | None = None
):
    """The forward's saved states: (batch, units, chunks, N, lanes) float32 (B, C: the
    group count, 1 when not given)."""
    batch, dim, length = u.shape
    ncb = units_per_batch(dim, 1 if B is None or C is None else groups_of(B, C))
    return [((batch, ncb, _nchunks(length), A.shape[1], lanes()), torch.float32)]


def thread_ranges(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The units of a scan of ``shape`` ((batch, dim, ..., groups)) split over this process's
    threads."""
    batch, dim, groups = shape[0], shape[1], shape[-1]
    return _ranges(batch * units_per_batch(dim, groups))


def compute_dtype(*rows: Tensor | None) -> torch.dtype:
    """The kernel's element type for u, delta, z (and out, dout, du, ddelta, dz): bfloat16 when
    all of them are bfloat16, else float32 (other types are converted to it)."""
    dtypes = {t.dtype for t in rows if t is not None}
    return torch.bfloat16 if dtypes == {torch.bfloat16} else torch.float32


def layout_for(u: Tensor) -> str:
    """The layout the kernel reads u, delta, z in and writes the outputs in: u's own, or
    channel-major for a u in neither."""
    return lay.layout_of(u) or lay.CHANNEL_MAJOR


def _time_major(M: Tensor) -> Tensor:
    """B or C as float32 (B, G, L, N) with unit state stride: a view of a time-major float32
    tensor (a slice of x_proj's (B, L, R + 2N) output, say), else one small copy. A fixed
    (D, N) one: contiguous float32 (D, N)."""
    if M.dim() == 2:
        return M.to(torch.float32).contiguous()
    Mg = M.unsqueeze(1) if M.dim() == 3 else M  # (B, G, N, L)
    if Mg.dtype == torch.float32 and (Mg.stride(2) == 1 or Mg.shape[2] == 1):
        return Mg.transpose(2, 3)
    out = torch.empty((Mg.shape[0], Mg.shape[1], Mg.shape[3], Mg.shape[2]), dtype=torch.float32)
    return out.copy_(Mg.transpose(2, 3))


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None or t.numel() == 0 else t.data_ptr()


class Prepared:
    """One scan's inputs as the kernel reads them, and the launches over this thread count.

    Holds the (possibly converted) tensors that ``args`` points into."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout=None):
        batch, dim, length = u.shape
        n = A.shape[1]
        Bt, Ct = _time_major(B), _time_major(C)
        groups = groups_of(B, C)
        if any(M.dim() == 4 and M.shape[1] != groups for M in (B, C)):
            raise ValueError("the cpu scan backend needs B and C with the same number of groups")
        max_n = _lib().dimbench_scan_max_dstate()
        if n > max_n:
            raise ValueError(f"the cpu scan backend supports d_state <= {max_n}")
        fixed = (B.dim() == 2, C.dim() == 2)
        # the kernel's fixed-B/C code reads float32 rows only (one instantiation per case)
        self.dtype = torch.float32 if any(fixed) else compute_dtype(u, delta, z)
        self.shape = (batch, dim, length, n, groups)
        self.layout = layout_for(u)
        rows = {
            k: None if t is None else lay.to_layout(t, self.layout, self.dtype)
            for k, t in (("u", u), ("delta", delta), ("z", z), ("dout", dout))
        }
        params = {"A": _f32(A), "D": _f32(D), "delta_bias": _f32(delta_bias)}
        self._keep = [*rows.values(), *params.values(), Bt, Ct]
        bf16, cl = self.dtype == torch.bfloat16, self.layout == lay.CHANNEL_LAST
        a = ScanArgs(batch, dim, length, n, groups, *fixed, bf16, delta_softplus, cl)
        for name, t in rows.items():
            self._set(a, name, t)
        for name, t in (("B", Bt), ("C", Ct)):
            setattr(a, name, _ptr(t))
            if t.dim() == 2:  # fixed: every step reads the one (D, N) matrix
                continue
            for field, stride in zip(("sb", "sg", "st"), t.stride()[:3], strict=True):
                setattr(a, f"{name}_{field}", stride)
            if t.shape[1] == 1:  # one (B, N, L) for every group
                setattr(a, f"{name}_sg", 0)
        for name, t in params.items():
            setattr(a, name, _ptr(t))
        self.args = a
        self.ranges = thread_ranges(self.shape)

    def _set(self, a: ScanArgs, name: str, t: Tensor | None) -> None:
        if t is not None and not lay.fits(t, self.layout):
            raise ValueError(f"{name} {tuple(t.stride())} is not {self.layout}")
        setattr(a, name, _ptr(t))
        if t is not None:
            getattr(a, f"{name}_s")[:] = t.stride()

    def empty(self, like: Tensor) -> Tensor:
        """An output or activation gradient for the kernel: (B, D, L) in its layout and dtype."""
        return lay.new_empty(like, self.layout, dtype=self.dtype, huge=True)

    def keep_last_state(self, last: Tensor | None) -> None:
        """Have :meth:`forward` also write the final state into ``last`` (contiguous float32
        (B, D, N)); None: not."""
        self.args.last = _ptr(last)

    def forward(self, out: Tensor, ckpt: Tensor | None) -> None:
        """Write ``out`` ((B, D, L) in ``self.layout`` and ``self.dtype``) and, when given,
        ``ckpt``."""
        self._set(self.args, "out", out)
        self.args.ckpt = _ptr(ckpt)
        ref, fn = ctypes.byref(self.args), _lib().dimbench_scan_fwd
        _run(fn, self.ranges, lambda i, lo, hi: (ref, lo, hi))

    def partials(self) -> Tensor:
        """Uninitialised per-thread sums for :meth:`backward` (the kernel zeroes them)."""
        size = _lib().dimbench_scan_partial_size(ctypes.byref(self.args))
        return torch.empty((len(self.ranges), size), dtype=torch.float32)

    def backward(self, ckpt, du, ddelta, dz, partials, dlast=None) -> None:
        """Write du, ddelta, dz ((B, D, L) in ``self.layout`` and ``self.dtype``; dz None without
        z) in full and each thread's sums of the other gradients in its row of ``partials``.
        ``dlast``: the final state's gradient (contiguous float32 (B, D, N)) or None."""
        a = self.args
        a.ckpt = _ptr(ckpt)
        a.dlast = _ptr(dlast)
        for name, t in (("du", du), ("ddelta", ddelta), ("dz", dz)):
            self._set(a, name, t)
        ref, fn, rows = ctypes.byref(a), _lib().dimbench_scan_bwd, partials.data_ptr()
        step = partials.stride(0) * partials.element_size()
        _run(fn, self.ranges, lambda i, lo, hi: (ref, rows + i * step, lo, hi))

    def reduce(self, partials, dA, dD, ddelta_bias, dB, dC) -> None:
        """Sum the threads' partials into dA (D, N), dD, ddelta_bias (D) (float32, any may be
        None) and dB, dC (contiguous (B, G, N, L) or fixed (D, N), float32 or bfloat16)."""
        _lib().dimbench_scan_bwd_reduce(
            ctypes.byref(self.args),
            partials.data_ptr(),
            partials.shape[0],
            _ptr(dA),
            _ptr(dD),
            _ptr(ddelta_bias),
            _ptr(dB),
            dB.dtype == torch.bfloat16,
            _ptr(dC),
            dC.dtype == torch.bfloat16,
        )


def _native(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel writes a B or C gradient in for an input of ``dtype``."""
    return dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32


# The speed gate's sensitivity check (tools/regress_eval.sh) makes this backend slower on
# purpose: every forward runs the kernel this many extra times on the same output, on average
# (fractions carry over from call to call). Read from $DIMBENCH_SCAN_CPU_EXTRA_PASSES at import,
# changed with set_extra_passes; 0 (the default) runs it once.
EXTRA_PASSES_ENV = "DIMBENCH_SCAN_CPU_EXTRA_PASSES"
_EXTRA = {"passes": 0.0, "owed": 0.0}


def set_extra_passes(passes: float) -> None:
    """Run the forward kernel ``passes`` extra times per call on average (0: once)."""
    if not passes >= 0:
        raise ValueError(f"extra passes must be >= 0, got {passes}")
    _EXTRA.update(passes=float(passes), owed=0.0)


def _extra_passes() -> int:
    if not _EXTRA["passes"]:
        return 0
    owed = _EXTRA["owed"] + _EXTRA["passes"]
    _EXTRA["owed"] = owed - int(owed)
    return int(owed)


def _passes_from_env() -> float:
    value = os.environ.get(EXTRA_PASSES_ENV, "").strip()
    try:
        return float(value or 0)
    except ValueError:
        raise ValueError(f"${EXTRA_PASSES_ENV} must be a number, got {value!r}") from None


set_extra_passes(_passes_from_env())


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save, last_state=False):
    prep = Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out = prep.empty(u)
    ckpt = hugepages.empty(saved_shapes(u, A, z, B, C)[0][0], torch.float32) if save else None
    # zeros: the state after no steps (L = 0), which the kernel does not write
    last = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
    prep.keep_last_state(last if last_state else None)
    if out.numel():
        for _ in range(1 + _extra_passes()):
            prep.forward(out, ckpt)
    return [out.to(u.dtype), *([last] if last_state else []), *([ckpt] if save else [])]


def backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, dlast=None):
    prep = Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dout=grad_out)
    batch, dim, length, n, groups = prep.shape
    (ckpt,) = saved
    if dlast is not None:
        dlast = dlast.to(torch.float32).contiguous()
    # the kernel writes every element of these: no zero fill
    du, ddelta = prep.empty(u), prep.empty(u)
    dz = prep.empty(u) if z is not None else None
    f32 = torch.float32
    dA = torch.empty((dim, n), dtype=f32)
    dD = torch.empty(dim, dtype=f32) if D is not None else None
    dbias = torch.empty(dim, dtype=f32) if delta_bias is not None else None
    dB, dC = (
        torch.empty(M.shape if M.dim() == 2 else (batch, groups, n, length), dtype=_native(M.dtype))
        for M in (B, C)
    )
    if u.numel():
        partials = prep.partials()
        prep.backward(ckpt, du, ddelta, dz, partials, dlast)
        prep.reduce(partials, dA, dD, dbias, dB, dC)
    else:
        for t in (dA, dD, dbias, dB, dC):
            if t is not None:
                t.zero_()
    dB, dC = (dM.sum(1) if M.dim() == 3 else dM for dM, M in ((dB, B), (dC, C)))
    grads = [du, ddelta, dA, dB, dC, dD, dz, dbias]
    return scan.in_input_dtypes(grads, u, delta, A, B, C, D, z, delta_bias)


backends.register(
    scan.ScanBackend(
        name="cpu",
        device_types=("cpu",),
        priority=10,
        probe=_probe,
        run=forward,
        backward=backward,
        saved_shapes=saved_shapes,
        output_layout=layout_for,
        features=frozenset({"last_state", "fixed_bc"}),
    )
)
