"""The precisions dimbench runs in: one short name each (what ``--dtype`` takes, what result rows
record) and its torch dtype. Every module that maps between the two uses this one map."""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
NAMES: tuple[str, ...] = tuple(TORCH_DTYPES)
HALF = (torch.float16, torch.bfloat16)


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``dtype`` as a torch dtype: a name of :data:`NAMES`, a torch dtype, or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(NAMES)}") from None
