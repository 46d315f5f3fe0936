"""Causal depthwise conv1d (Mamba's local mixing before the scan).

``causal_conv1d(x, weight, bias=None, activation=None, backend="auto")``: x (B, D, L),
weight (D, K), bias (D,); out_t = act(bias + sum_k weight[:, k] * x[:, t - K + 1 + k]) with
zeros before the sequence start. Backends: ``torch`` (F.conv1d on a left-padded input),
``cpu`` (conv_cpu.py: one fused C++ pass, float32/bfloat16 CPU tensors, built at first use;
auto's choice on CPU when a compiler is there, torch for other dtypes), ``causal_conv1d``
(Dao-AILab's CUDA kernel, when importable) and ``triton`` (conv_triton.py: one fused kernel, CUDA;
CPU tensors too under TRITON_INTERPRET=1, never auto's choice there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimbench.ops import backends, conv_cpu, triton_util

Tensor = torch.Tensor


_IMPORTED: dict = {}  # a plain dict, which torch.compile reads as a constant (see backends)


def _causal_conv1d_fn():
    if "fn" not in _IMPORTED:
        try:
            from causal_conv1d import causal_conv1d_fn
        except Exception:
            causal_conv1d_fn = None
        _IMPORTED["fn"] = causal_conv1d_fn
    return _IMPORTED["fn"]


def conv_backends(device: str | torch.device | None = None) -> list[str]:
    """Conv backends usable here (for ``device``'s type when given), fastest first."""
    return backends.available("conv", device)


def resolve_for(x: Tensor, weight: Tensor, backend: str = "auto") -> str:
    """The backend that runs for these tensors: ``backends.resolve`` for their device and dtype,
    except that ``auto`` takes torch where the cpu kernel cannot take this filter width."""
    name = backends.resolve("conv", backend, x.device, x.dtype)
    if backend == "auto" and name == "cpu" and not conv_cpu.supports(x, weight):
        return "torch"
    return name


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Plain PyTorch twin: depthwise conv over a sequence left-padded with K-1 zeros."""
    dim, width = weight.shape
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    return F.silu(out) if activation == "silu" else out


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
) -> Tensor:
    """Causal depthwise conv1d, optionally fused with SiLU (``activation="silu"``)."""
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"expected x (B, D, L) and weight (D, K), got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    return backends.get("conv", resolve_for(x, weight, backend)).run(x, weight, bias, activation)


def _causal_conv1d_cuda(x, weight, bias, activation):
    return _causal_conv1d_fn()(x, weight, bias, activation=activation)


def _triton(x, weight, bias, activation):
    from dimbench.ops.conv_triton import causal_conv1d_triton

    return causal_conv1d_triton(x, weight, bias, activation)


def _conv(name: str, device_types: tuple[str, ...], run, **kw) -> backends.Backend:
    return backends.register(
        backends.Backend(op="conv", name=name, device_types=device_types, run=run, **kw)
    )


_conv("torch", ("cpu", "cuda", backends.META), causal_conv1d_ref)
_conv(
    "cpu",
    ("cpu",),
    conv_cpu.causal_conv1d_cpu,
    priority=10,
    dtypes=conv_cpu.DTYPES,
    probe=conv_cpu.unavailable_reason,
)
_conv(
    "causal_conv1d",
    ("cuda",),
    _causal_conv1d_cuda,
    priority=30,
    probe=backends.cuda_package_probe(_causal_conv1d_fn, "causal-conv1d"),
)
_conv(
    "triton",
    triton_util.device_types(),
    _triton,
    # interpreted kernels are the slowest thing on a CPU: never auto's choice there
    priority=-1 if triton_util.interpreting() else 20,
    probe=triton_util.unavailable_reason,
)
