"""Kernels. Each has a plain-PyTorch reference twin, a FLOP formula and optional fast backends.

This file is the only loader of the op modules: each registers its backends in
:mod:`dimbench.ops.backends` (which imports none of them) when imported here.
"""

from dimbench.ops import scan_cpu as _scan_cpu  # noqa: F401  (registers the "cpu" backend)
from dimbench.ops import scan_mamba as _scan_mamba  # noqa: F401  ("mamba_ssm", CUDA)
from dimbench.ops import scan_triton as _scan_triton  # noqa: F401  ("triton", CUDA)
from dimbench.ops.attention import attention, attention_backends
from dimbench.ops.conv import causal_conv1d, causal_conv1d_ref, conv_backends
from dimbench.ops.mamba_inner import mamba_inner_packed
from dimbench.ops.scan import scan_backends, scan_flops, selective_scan
from dimbench.ops.scan_ref import selective_scan_ref

__all__ = [
    "attention",
    "attention_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "conv_backends",
    "mamba_inner_packed",
    "scan_backends",
    "scan_flops",
    "selective_scan",
    "selective_scan_ref",
]
