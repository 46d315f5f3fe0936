"""Operator categories: which kind of work an operator is, from its name and the operators it
runs inside. The profiler (measured time) and the meta-device op recorder (counted FLOPs and
bytes) classify with the same function, so their rows join category by category.

``classify(chain)`` takes the names of an operator and the operators that enclose it, outermost
first (``["aten::linear", "aten::addmm"]``, ``["dimbench::selective_scan", "aten::clone"]``):

1. inside a custom operator (a namespace other than ``aten``/``prim``, e.g. ``dimbench::``):
   the innermost custom operator's kind, read from its name (scan, attention, conv, norm);
2. inside a cast (``aten::to``, ``aten::_to_copy``, autocast's own): ``copy``: autocast's casts
   run inside ``aten::linear`` on the CPU but before it on the meta device;
3. inside a kernel operator (attention, norm, conv, matmul): the outermost one's category, so
   the matmuls of a math-attention fallback are attention and a linear's bias copy is matmul;
4. inside ``Optimizer.step`` / ``zero_grad`` (a train step's profiler range): ``optimizer``;
5. otherwise the operator's own kind: ``copy`` (copies, concatenation, indexing, padding,
   views and permutes), ``elementwise`` (torch's pointwise ops and reductions), ``other``.

``overhead`` is no operator: the time of a step outside every operator (Python, module calls;
on a GPU, the time the device sat idle).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

CATEGORIES = (
    "scan",
    "attention",
    "matmul",
    "conv",
    "norm",
    "elementwise",
    "copy",
    "optimizer",
    "other",
    "overhead",
)
KERNEL_CATEGORIES = ("attention", "norm", "conv", "matmul")  # scopes: what runs inside counts

_MATMUL = frozenset(
    "mm bmm addmm baddbmm addbmm addmv mv dot vdot matmul linear bilinear _addmm_activation "
    "mkldnn_linear _mkl_linear _int_mm _scaled_mm linalg_vecdot".split()
)
_CAST = frozenset(
    "to _to_copy type_as _autocast_to_reduced_precision _autocast_to_full_precision".split()
)
_COPY = frozenset(
    "copy_ clone contiguous cat stack hstack vstack index_select index index_put index_put_ "
    "_index_put_impl_ gather scatter scatter_add scatter_add_ embedding constant_pad_nd pad "
    "repeat repeat_interleave flip roll narrow_copy masked_select take fill_ zero_ zeros "
    "zeros_like ones ones_like full full_like new_zeros new_ones new_full _copy_from "
    "_copy_from_and_resize index_add index_add_ index_copy index_copy_ select_backward "
    "slice_backward index_select_backward "
    "embedding_dense_backward embedding_backward lift_fresh_copy".split()
)
_VIEW = frozenset(
    "view _unsafe_view reshape _reshape_alias as_strided transpose t permute unsqueeze squeeze "
    "expand expand_as select slice narrow split split_with_sizes chunk unbind flatten unflatten "
    "view_as alias detach unfold diagonal movedim swapaxes real imag lift_fresh resolve_conj "
    "resolve_neg _neg_view _conj numpy_T".split()
)
_REDUCTION = frozenset(
    "sum mean amax amin max min var std var_mean std_mean prod softmax _softmax log_softmax "
    "_log_softmax _softmax_backward_data _log_softmax_backward_data cumsum cumprod logsumexp "
    "norm linalg_vector_norm all any argmax argmin mse_loss mse_loss_backward".split()
)
_OTHER = frozenset(
    "empty empty_like empty_strided resize_ arange linspace randn rand randint normal_ "
    "uniform_ item _local_scalar_dense argsort sort topk nonzero".split()
)
ALLOCATORS = frozenset("empty empty_like empty_strided new_empty new_empty_strided resize_".split())
_CUSTOM_KINDS = (  # name fragments of custom operators -> category (first match wins)
    ("scan", "scan"),
    ("ssm", "scan"),
    ("mamba", "scan"),
    ("mixer", "scan"),
    ("attn", "attention"),
    ("attention", "attention"),
    ("conv", "conv"),
    ("norm", "norm"),
)


def split_name(name: str) -> tuple[str, str]:
    """``"aten::addmm"`` -> ``("aten", "addmm")``; a name without a namespace is aten's."""
    ns, sep, op = name.partition("::")
    return (ns, op) if sep else ("aten", name)


def is_custom(name: str) -> bool:
    """An operator outside torch's own namespaces (a ``torch.library`` custom op)."""
    ns, op = split_name(name)
    return ns not in ("aten", "prim", "prims", "quantized") and bool(op)


def custom_category(name: str) -> str:
    op = split_name(name)[1].lower()
    for fragment, category in _CUSTOM_KINDS:
        if fragment in op:
            return category
    return "other"


def kernel_category(name: str) -> str | None:
    """The category of an aten kernel operator (attention, norm, conv, matmul), else None."""
    ns, op = split_name(name)
    if ns != "aten":
        return None
    if any(k in op for k in ("scaled_dot_product", "flash_attention", "efficient_attention")):
        return "attention"
    if "cudnn_attention" in op or "multi_head_attention" in op:
        return "attention"
    if any(k in op for k in ("layer_norm", "rms_norm", "group_norm", "batch_norm")):
        return "norm"
    if "instance_norm" in op:
        return "norm"
    if "convolution" in op or op.startswith(("conv", "_conv", "thnn_conv", "slow_conv")):
        return "conv"
    if op.startswith("_slow_conv") or op.startswith("mkldnn_conv"):
        return "conv"
    if op in _MATMUL:
        return "matmul"
    return None


def is_cast(name: str) -> bool:
    ns, op = split_name(name)
    return ns == "aten" and op in _CAST


def is_optimizer_range(name: str) -> bool:
    return name.startswith(("Optimizer.step", "Optimizer.zero_grad"))


@functools.cache
def _pointwise(op: str) -> bool:
    """torch tags the op ``pointwise`` (any overload)."""
    import torch

    packet = getattr(torch.ops.aten, op, None)
    if packet is None:
        return False
    try:
        return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())
    except (AttributeError, RuntimeError):
        return False


def own_category(name: str) -> str:
    """The category of one operator by its name alone (no enclosing operators)."""
    if is_custom(name):
        return custom_category(name)
    kernel = kernel_category(name)
    if kernel:
        return kernel
    ns, op = split_name(name)
    if ns != "aten":
        return "other"
    base = op.rstrip("_") if op.endswith("_") and op not in _COPY else op
    if op in _CAST or op in _COPY or op in _VIEW or base in _COPY or base in _VIEW:
        return "copy"
    if op in _OTHER:
        return "other"
    if op.startswith("_foreach_"):
        return "elementwise"
    if base in _REDUCTION or _pointwise(op) or _pointwise(base):
        return "elementwise"
    if op.endswith("_backward") and _pointwise(op[: -len("_backward")]):
        return "elementwise"  # silu_backward, gelu_backward, ...
    return "other"


def classify(chain: Sequence[str]) -> str:
    """The category of the innermost operator of ``chain``: operator names (``ns::op``),
    outermost first. Profiler ranges (names without ``::``) are ignored but for the
    optimizer's (``Optimizer.step#AdamW.step``)."""
    ops = [n for n in chain if "::" in n]
    while len(ops) > 1 and split_name(ops[-1])[1] in ALLOCATORS:
        ops = ops[:-1]  # an allocation inside an operator is that operator's work
    customs = [n for n in ops if is_custom(n)]
    if customs:
        return custom_category(customs[-1])
    if any(is_cast(n) for n in ops):
        return "copy"
    for name in ops:
        kernel = kernel_category(name)
        if kernel:
            return kernel
    if any(is_optimizer_range(n) for n in chain):
        return "optimizer"
    return own_category(ops[-1]) if ops else "other"


def is_view_name(name: str) -> bool:
    """An operator that only re-describes memory (views, permutes): no data moves."""
    ns, op = split_name(name)
    return ns == "aten" and op in _VIEW
