"""The one registry of kernel backends: a ``Backend`` record per (op, name), and ``resolve``,
which turns a name or ``auto`` into the backend that runs for a device and dtype, decided
without a tensor (sweeps resolve every configuration's backends before its process starts, so
each result row names what actually ran; the ops resolve the same way at every call).

    available("scan", "cpu")                      -> ["cpu", "ref"]
    resolve("attention", "auto", "cuda", "bf16")  -> "flash_attn" where flash-attn is installed

Each op module registers its backends (``register``) when it is imported, and only
``dimbench/ops/__init__.py`` imports the op modules: this module imports none of them, so the
arrow runs one way (importing ``dimbench.ops.backends`` runs the package's ``__init__`` first).

The rule, the same for every op:
- ``auto``: the highest-priority backend that runs on the device type, takes the dtype and
  whose probe finds it usable. On the ``meta`` device (shapes only) it is the highest-priority
  backend that lists ``meta`` among its device types.
- a name: that backend, when it exists, runs on the device type, takes the dtype and is usable;
  on ``meta`` any registered name is accepted (its fake implementation serves).
- anything else is a ``BackendError`` (one line) that lists what this machine has. A backend
  that is not installed is not an error until it is asked for by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dimbench.dtypes import torch_dtype
from dimbench.errors import UsageError

META = "meta"


class BackendError(UsageError, RuntimeError):
    """A backend that does not exist, or cannot run on the device or dtype asked for. A
    UsageError (the CLI's one line, exit 2), which is a ValueError; also a RuntimeError, which
    is what callers of the ops catch for a kernel that cannot run here."""


def _usable() -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One implementation of one op. Ops with more to say (the scan's backward, saved states
    and output layout) subclass it with their own fields."""

    op: str  # "scan", "conv", "attention"
    name: str
    device_types: tuple[str, ...]  # where it runs ("meta": auto's choice for shapes only)
    run: Callable[..., Any]  # the implementation (the scan's: its forward)
    priority: int = 0  # auto picks the highest usable
    dtypes: tuple[torch.dtype, ...] | None = None  # the input dtypes it takes; None: any
    probe: Callable[[], str | None] = _usable  # None when usable here, else why not

    def takes(self, dtype: torch.dtype) -> bool:
        return self.dtypes is None or dtype in self.dtypes


def cuda_package_probe(load: Callable[[], object], package: str) -> Callable[[], str | None]:
    """The probe of a backend that needs the CUDA package ``package`` (``load()`` returns it, or
    None where it cannot be imported) and a CUDA device."""

    def probe() -> str | None:
        if load() is None:
            return f"{package} is not installed"
        return None if torch.cuda.is_available() else "no CUDA device"

    return probe


# op -> name -> record, each op's records kept in priority order (highest first)
_REGISTRY: dict[str, dict[str, Backend]] = {}
# (op, name) -> the probe's answer. A plain dict: torch.compile reads it as a constant where it
# would trace into a functools.cache wrapper (and the compiler check behind a probe).
_REASONS: dict[tuple[str, str], str | None] = {}
# (op, name, device type, dtype) -> what resolve answered (probes and records do not change
# but by register, which clears it)
_RESOLVED: dict[tuple, str] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) ``backend`` in its op's list."""
    records = {**_REGISTRY.get(backend.op, {}), backend.name: backend}
    _REGISTRY[backend.op] = dict(sorted(records.items(), key=lambda kv: -kv[1].priority))
    _REASONS.pop((backend.op, backend.name), None)
    _RESOLVED.clear()
    return backend


def _records(op: str) -> dict[str, Backend]:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[op]


def get(op: str, name: str) -> Backend:
    """The record of ``op``'s backend ``name`` (registered: not necessarily usable here)."""
    records = _records(op)
    if name not in records:
        raise BackendError(
            f"unknown {op} backend {name!r}; available here: {', '.join(available(op))}"
        )
    return records[name]


def unavailable_reason(op: str, name: str) -> str | None:
    """Why ``op``'s backend ``name`` cannot run on this machine (None: it can); probed once."""
    key = (op, name)
    if key not in _REASONS:
        _REASONS[key] = get(op, name).probe()
    return _REASONS[key]


def _device_type(device: str | torch.device | None) -> str | None:
    if device is None:
        return None
    return device.type if isinstance(device, torch.device) else str(device).split(":")[0]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _why_not(b: Backend, device_type: str | None, dtype: torch.dtype | None) -> str | None:
    """Why ``b`` cannot run on ``device_type`` with ``dtype`` inputs (None: it can)."""
    reason = unavailable_reason(b.op, b.name)
    if reason is not None:
        return f"is unavailable ({reason})"
    if device_type is not None and device_type not in b.device_types:
        where = "/".join(t for t in b.device_types if t != META)
        return f"runs on {where}, not {device_type}"
    if dtype is not None and not b.takes(dtype):
        takes = " or ".join(map(_dtype_name, b.dtypes or ()))
        return f"takes {takes} inputs, not {_dtype_name(dtype)}"
    return None


def available(
    op: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> list[str]:
    """Backends of ``op`` usable on this machine, fastest first (for ``device``'s type and
    ``dtype`` when given)."""
    device_type, dt = _device_type(device), None if dtype is None else torch_dtype(dtype)
    return [b.name for b in _records(op).values() if _why_not(b, device_type, dt) is None]


def resolve(
    op: str,
    name: str,
    device: str | torch.device,
    dtype: str | torch.dtype | None = None,
) -> str:
    """The backend ``name`` (or ``auto``) means for ``op`` on ``device`` with inputs of
    ``dtype`` (a torch dtype or fp32 / bf16 / fp16; None: float32); see the module docstring."""
    device_type, dt = _device_type(device), torch_dtype(dtype)
    key = (op, name, device_type, dt)
    if key not in _RESOLVED:  # the ops resolve at every call: the answer never changes
        _RESOLVED[key] = _resolve(op, name, device_type, dt)
    return _RESOLVED[key]


def _resolve(op: str, name: str, device_type: str | None, dt: torch.dtype) -> str:
    records = _records(op)
    if name == "auto":
        if device_type == META:
            return next(b.name for b in records.values() if META in b.device_types)
        for b in records.values():
            if _why_not(b, device_type, dt) is None:
                return b.name
        raise BackendError(f"no {op} backend runs on {device_type} for {_dtype_name(dt)}")
    b = get(op, name)
    if device_type != META:
        why = _why_not(b, device_type, dt)
        if why is not None:
            here = ", ".join(available(op, device_type, dt)) or "none"
            raise BackendError(f"{op} backend {name!r} {why}; available here: {here}")
    return name
