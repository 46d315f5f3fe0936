"""The two memory layouts of a (B, D, L) activation that the CPU kernels read and write.

``CHANNEL_MAJOR``: time contiguous (stride 1 along L), e.g. a contiguous (B, D, L) tensor or a
channel slice of one. ``CHANNEL_LAST``: channels contiguous (stride 1 along D), e.g.
``(B, L, D).transpose(1, 2)``, a projection's output seen with mamba_ssm's (B, D, L) semantics,
or a channel slice of a (B, L, 2D) one. Batch strides are free in both.
"""

from __future__ import annotations

import torch

from dimbench.ops import hugepages

Tensor = torch.Tensor

CHANNEL_MAJOR, CHANNEL_LAST = "channel-major", "channel-last"


def fits(t: Tensor, layout: str) -> bool:
    """Whether (B, D, L) ``t`` can be read in ``layout`` as it is."""
    if layout == CHANNEL_MAJOR:
        return t.stride(2) == 1 or t.shape[2] <= 1
    return t.stride(1) == 1 or t.shape[1] <= 1


def layout_of(t: Tensor) -> str | None:
    """``t``'s layout (channel-major where both fit), None where neither does."""
    for layout in (CHANNEL_MAJOR, CHANNEL_LAST):
        if fits(t, layout):
            return layout
    return None


def new_empty(
    like: Tensor,
    layout: str,
    shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    huge: bool = False,
) -> Tensor:
    """An uninitialised (B, D, L) tensor in ``layout`` (``like``'s shape, dtype and device unless
    given; fake and meta tensors too). ``huge``: on transparent huge pages where offered (real CPU
    tensors: not in fake implementations)."""
    batch, dim, length = like.shape if shape is None else shape
    dtype = like.dtype if dtype is None else dtype
    physical = (batch, length, dim) if layout == CHANNEL_LAST else (batch, dim, length)
    if huge and like.device.type == "cpu" and not torch.compiler.is_compiling():
        t = hugepages.empty(physical, dtype)
    else:
        t = like.new_empty(physical, dtype=dtype)
    return t.transpose(1, 2) if layout == CHANNEL_LAST else t


def to_layout(t: Tensor, layout: str, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` in ``dtype`` readable in ``layout``: itself where it already is, else one copy."""
    dtype = t.dtype if dtype is None else dtype
    if t.dtype == dtype and fits(t, layout):
        return t
    return new_empty(t, layout, dtype=dtype).copy_(t)
