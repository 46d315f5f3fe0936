"""Measurements: timing, memory, FLOPs, GPU telemetry, run metadata."""

from __future__ import annotations

import importlib

# name -> submodule; imported on first use so `import dimbench.measure` stays cheap
_EXPORTS = {"count_flops": "dimbench.measure.flops"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dimbench.measure' has no attribute {name!r}")
