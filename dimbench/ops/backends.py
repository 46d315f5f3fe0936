"""One registry of kernel backends for every op: which backends run here, and what ``auto``
means for a device and dtype, decided without a tensor (sweeps resolve every configuration's
backends before its process starts, so each result row names what actually ran).

    available("scan", "cpu")                      -> ["cpu", "ref"]
    resolve("attention", "auto", "cuda", "bf16")  -> "flash_attn" where flash-attn is installed

A backend that is not installed is not an error until it is asked for by name; then the error
(``BackendError``, one line) lists what this machine has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dimbench.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HALF = (torch.float16, torch.bfloat16)


class BackendError(UsageError):
    """A backend that does not exist, or cannot run on the device or dtype asked for."""


@dataclass(frozen=True)
class Op:
    """An op's backends: ``available(device_type)`` lists the usable ones, fastest first;
    ``choose(name, device_type, dtype)`` turns ``auto`` or a name into the one that runs
    (raising ValueError / RuntimeError with the reason when it cannot)."""

    name: str
    available: Callable[[str | None], list[str]]
    choose: Callable[[str, str, torch.dtype], str]


_OPS: dict[str, Op] = {}


def register_op(op: Op) -> None:
    _OPS[op.name] = op


def _op(name: str) -> Op:
    import dimbench.ops  # noqa: F401  (each op module registers itself)

    if name not in _OPS:
        raise ValueError(f"unknown op {name!r}; ops: {', '.join(sorted(_OPS))}")
    return _OPS[name]


def _device_type(device: str | torch.device | None) -> str | None:
    if device is None:
        return None
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def available(op: str, device: str | torch.device | None = None) -> list[str]:
    """Backends of ``op`` usable on this machine (for ``device``'s type when given)."""
    return _op(op).available(_device_type(device))


def resolve(
    op: str,
    name: str,
    device: str | torch.device,
    dtype: str | torch.dtype | None = None,
) -> str:
    """The backend ``name`` (or ``auto``) means for ``op`` on ``device`` with inputs of
    ``dtype`` (a torch dtype or fp32 / bf16 / fp16; None: float32)."""
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    try:
        return _op(op).choose(name, _device_type(device), dtype or torch.float32)
    except (ValueError, RuntimeError) as e:
        raise BackendError(str(e)) from None
