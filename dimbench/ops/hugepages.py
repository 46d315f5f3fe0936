"""Big CPU output tensors on transparent huge pages, where Linux offers them on request.

A fresh (B, D, L) tensor of tens of MB costs more in page faults than the kernel that fills it
(4 KiB pages: about 30 ms per 72 MB on the 2-core EPYC, 8 ms with 2 MiB pages). With THP in
``madvise`` mode (the common default) memory gets huge pages only where asked, so
:func:`empty` asks for the 2 MiB-aligned interior of the buffer before anything touches it.
Elsewhere (THP off or ``always``, not Linux) it is plain ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20
MIN_BYTES = 2 * HUGE_PAGE  # below this a huge page or two buys nothing
_MADV_HUGEPAGE = 14
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise when THP is in madvise mode, else None (nothing to ask for)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if "[madvise]" not in _THP_MODE.read_text():
            return None
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _real(t: torch.Tensor) -> bool:
    """Whether ``t`` has memory behind it (a fake tensor, as the cost model records a model
    with, has no address to advise)."""
    from torch._subclasses.fake_tensor import FakeTensor

    return not isinstance(t, FakeTensor)


def advise(t: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages under ``t``'s 2 MiB-aligned interior (before it is first written)."""
    madvise = _madvise()
    if madvise is not None and t.device.type == "cpu" and t.nbytes >= MIN_BYTES and _real(t):
        start = t.data_ptr()
        lo = -(-start // HUGE_PAGE) * HUGE_PAGE
        hi = (start + t.nbytes) // HUGE_PAGE * HUGE_PAGE
        if hi > lo:
            madvise(lo, hi - lo, _MADV_HUGEPAGE)  # a refusal only costs the 4 KiB faults
    return t


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, on huge pages where they are offered."""
    return advise(torch.empty(tuple(shape), dtype=dtype))
