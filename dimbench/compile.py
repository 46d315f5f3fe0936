"""``--compile``: a model through ``torch.compile`` (inductor), or as it is (eager, the default).

Static shapes (``dynamic=False``): a benchmark configuration or a training run sees one input
size, and inductor's automatic dynamic shapes fail on DiM's resolution-dependent token layout
(torch 2.14). The custom kernels (the selective scan, the fused conv) stay opaque ops inside the
compiled graph; everything around them (norms, modulation, gates, the scan switch's gathers,
residual adds) is inductor's to fuse. The first call compiles (tens of seconds on a CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dimbench.errors import UsageError

if TYPE_CHECKING:  # torch is imported where a model is compiled: the CLI's specs import this
    from torch import nn

COMPILERS = ("eager", "inductor")


def check_compiler(name: str) -> str:
    if name not in COMPILERS:
        raise UsageError(f"unknown compiler {name!r}; valid: {', '.join(COMPILERS)}")
    return name


def compiled(model: nn.Module, compiler: str) -> nn.Module:
    """``model`` itself for eager; a compiled wrapper sharing its parameters otherwise."""
    if check_compiler(compiler) == "eager":
        return model
    import torch

    return torch.compile(model, backend="inductor", dynamic=False)
