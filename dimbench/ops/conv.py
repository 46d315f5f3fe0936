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

from dimbench.ops import conv_cpu, triton_util
from dimbench.ops.backends import Op, register_op

Tensor = torch.Tensor


_IMPORTED: dict = {}  # a plain dict, which torch.compile reads as a constant (see conv_cpu)


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
    dtype = torch.device(device).type if device is not None else None
    names = []
    if dtype in (None, "cpu") and conv_cpu.unavailable_reason() is None:
        names.append("cpu")
    cuda = torch.cuda.is_available() and dtype in (None, "cuda")
    if cuda and _causal_conv1d_fn() is not None:
        names.append("causal_conv1d")
    interpreting = triton_util.interpreting()
    triton_ok = (cuda or interpreting) and triton_util.unavailable_reason() is None
    if triton_ok and not interpreting:
        names.append("triton")
    names.append("torch")
    if triton_ok and interpreting:  # the interpreter is the slowest of all
        names.append("triton")
    return names


CONV_BACKENDS = ("cpu", "torch", "triton", "causal_conv1d")


def choose_conv_backend(backend: str, device_type: str, dtype: torch.dtype) -> str:
    """``auto`` -> the fastest conv usable on ``device_type`` for ``dtype`` (torch on the meta
    device, and where the cpu kernel lacks the dtype); a named one must run there."""
    if backend == "auto":
        if device_type == "meta":
            return "torch"
        usable = conv_backends(device_type)
        return next((b for b in usable if b != "cpu" or dtype in conv_cpu.DTYPES), "torch")
    if backend not in CONV_BACKENDS:
        raise ValueError(
            f"unknown conv backend {backend!r}; available here: {', '.join(conv_backends())}"
        )
    if device_type != "meta" and backend not in conv_backends(device_type):
        raise RuntimeError(
            f"conv backend {backend!r} cannot run on {device_type}; available there: "
            f"{', '.join(conv_backends(device_type))}"
        )
    return backend


register_op(Op("conv", conv_backends, choose_conv_backend))


def resolve_auto(x: Tensor, weight: Tensor) -> str:
    """The backend ``auto`` means for these tensors: the device's and dtype's choice, unless
    the cpu kernel cannot take this filter width (then torch)."""
    name = choose_conv_backend("auto", x.device.type, x.dtype)
    return "torch" if name == "cpu" and not conv_cpu.supports(x, weight) else name


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
    if backend == "auto":
        backend = resolve_auto(x, weight)
    if backend == "torch":
        return causal_conv1d_ref(x, weight, bias, activation)
    if backend == "cpu":
        reason = conv_cpu.unavailable_reason()
        if reason is not None:
            raise RuntimeError(
                f"conv backend 'cpu' is unavailable ({reason}); "
                f"available here: {', '.join(conv_backends())}"
            )
        return conv_cpu.causal_conv1d_cpu(x, weight, bias, activation)
    if backend == "causal_conv1d":
        fn = _causal_conv1d_fn()
        if fn is None or not x.is_cuda:
            raise RuntimeError(
                "conv backend 'causal_conv1d' needs the causal-conv1d package and CUDA tensors; "
                f"available here: {', '.join(conv_backends())}"
            )
        return fn(x, weight, bias, activation=activation)
    if backend == "triton":
        if triton_util.unavailable_reason() is None and x.device.type in triton_util.device_types():
            from dimbench.ops.conv_triton import causal_conv1d_triton

            return causal_conv1d_triton(x, weight, bias, activation)
        raise RuntimeError(
            f"conv backend 'triton' cannot run on {x.device.type} here "
            f"({triton_util.unavailable_reason() or 'CUDA tensors only'}); "
            f"available here: {', '.join(conv_backends(x.device))}"
        )
    available = ", ".join(conv_backends())
    raise ValueError(f"unknown conv backend {backend!r}; available here: {available}")
