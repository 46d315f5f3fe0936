"""Triton device functions the Triton kernels (scan_triton_kernels, conv_triton) share.

Imports triton: only the kernel modules import this, when their backend is first used.
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp of -|x| only."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    return tl.where(x >= 0, r, e * r)
