"""Every operator a model runs, with its FLOPs and the bytes it moves, recorded without running
anything: the model is built and called on fake tensors (``FakeTensorMode``, shapes only, no
memory) under a ``TorchDispatchMode`` that sees each aten and custom operator.

- FLOPs: ``torch.utils.flop_counter``'s formulas plus dimbench's (``measure.flops.FLOP_FORMULAS``
  and the custom ops' ``register_flop_formula``), so the totals equal ``count_flops``'. An
  operator without a formula is decomposed (as ``FlopCounterMode`` does) and its parts are
  recorded; the decomposed operators become the parts' ``scopes``.
- Bytes: the inputs an operator reads plus the outputs it writes (broadcast dimensions counted
  once; outputs that alias an input not again); views move nothing.
- Category: ``op_categories.classify(scopes + name)``, the rule the profiler uses too.
- Block: the model's ModuleList child the operator ran in (``blocks.3``), from forward hooks.
- Live memory: the bytes of operator outputs still referenced, tracked as their storages are
  freed; its peak plus the parameters is the predicted peak memory.

The fake tensors keep the device the model asks for (``cpu`` by default), so autocast (bf16)
inserts the same casts and picks the same kernels (e.g. the CPU flash attention) as a real run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from dimbench.measure.op_categories import (
    CATEGORIES,
    classify,
    is_cast,
    is_view_name,
    kernel_category,
)

DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}
# size and layout queries are not operators that run
_QUERIES = {
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
    "aten::sym_storage_offset",
    "aten::size",
    "aten::stride",
    "aten::numel",
    "aten::dim",
    "aten::is_contiguous",
    "aten::is_strides_like_format",
    "aten::is_non_overlapping_and_dense",
    "aten::sym_is_contiguous",
    "aten::storage_offset",
    "prim::device",
    "prim::layout",
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument as metadata: enough to make a real one of the same layout."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    param: bool = False  # a view of a model parameter or buffer (read from memory each step)

    @classmethod
    def of(cls, t: torch.Tensor, param: bool = False) -> TensorSpec:
        return cls(tuple(t.shape), tuple(t.stride()), int(t.storage_offset()), t.dtype, param)

    @property
    def storage_numel(self) -> int:
        """Elements the view reaches in its storage (offset + extent)."""
        if any(s == 0 for s in self.shape):
            return self.offset
        return (
            self.offset
            + 1
            + sum((n - 1) * st for n, st in zip(self.shape, self.stride, strict=True))
        )

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


def dtype_name(dtype: torch.dtype | None) -> str:
    if dtype is None:
        return "none"
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class OpRecord:
    """One operator as it ran: what, where (scopes, block), how much work."""

    name: str  # "aten::addmm", "dimbench::selective_scan"
    category: str
    scopes: tuple[str, ...]  # the decomposed operators it ran inside, outermost first
    block: str | None  # the ModuleList child it ran in, e.g. "blocks.3"
    dtype: str  # of its first floating-point input (else output): fp32 / bf16 / ...
    flops: int
    bytes: int
    view: bool  # moves no data (a view, a permute, a no-op)
    dims: tuple[int, ...] | None = None  # see ``op_dims``
    ms: float | None = None  # its time, where it ran for real under a timing recorder
    func: object = None  # the OpOverload (kept when args are)
    args: object = None  # (args, kwargs) with tensors as TensorSpec, for replay (keep_args)

    @property
    def signature(self) -> tuple:
        """Identity for replay: the overload and its arguments' layouts and values."""
        return (str(self.func), repr(self.args))


@dataclass
class OpStream:
    """The operators of one step of one configuration, and its memory."""

    model: str
    image_size: int
    batch_size: int
    dtype: str
    mode: str
    device: str
    ops: list[OpRecord]
    params_bytes: int  # parameters and buffers
    peak_live_bytes: int  # peak of operator outputs alive at once
    blocks: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    @property
    def peak_bytes(self) -> int:
        return self.params_bytes + self.peak_live_bytes

    def by_category(self, block: str | None = None) -> dict[str, dict[str, int]]:
        """{category: {"flops", "bytes", "ops"}} over every operator (or one block's)."""
        out = {c: {"flops": 0, "bytes": 0, "ops": 0} for c in CATEGORIES}
        for op in self.ops:
            if block is not None and op.block != block:
                continue
            entry = out[op.category]
            entry["flops"] += op.flops
            entry["bytes"] += op.bytes
            entry["ops"] += 0 if op.view else 1
        return out

    def by_block(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {
            b: {"flops": 0, "bytes": 0, "ops": 0} for b in self.blocks
        }
        for op in self.ops:
            if op.block is not None:
                entry = out.setdefault(op.block, {"flops": 0, "bytes": 0, "ops": 0})
                entry["flops"] += op.flops
                entry["bytes"] += op.bytes
                entry["ops"] += 0 if op.view else 1
        return out


@functools.cache
def flop_formulas() -> dict:
    """torch's FLOP formulas with dimbench's overrides, keyed by OpOverloadPacket."""
    from torch.utils.flop_counter import flop_registry, shape_wrapper

    import dimbench.ops  # noqa: F401  (the custom ops register their formulas)
    from dimbench.measure.flops import FLOP_FORMULAS

    custom = {
        k: v if getattr(v, "_get_raw", False) else shape_wrapper(v)
        for k, v in FLOP_FORMULAS.items()
    }
    return {**flop_registry, **custom}


def op_name(func) -> str:
    return (
        func._overloadpacket._qualified_op_name if hasattr(func, "_overloadpacket") else str(func)
    )


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _touched_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor's elements occupy, a broadcast (stride-0) dimension counted once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _operands(args, kwargs) -> list[torch.Tensor]:
    """The tensors an operator computes from: its inputs less an ``out=`` destination (a
    ``torch.mm(a, b, out=c)`` is keyed by a and b, not b and c)."""
    return _tensors((args, {k: v for k, v in (kwargs or {}).items() if k != "out"}))


def op_dims(category: str, name: str, tensors: list[torch.Tensor], args) -> tuple[int, ...] | None:
    """The shape a pricing curve is keyed by: matmul (batch, m, n, k); attention
    (batch*heads, Lq, Lk, head dim); scan (batch, D, L, N); conv (batch, Cin, Cout, groups,
    kernel elements, output positions)."""
    backward = "backward" in name or name.endswith("_bwd")
    if category == "matmul":
        mats = [t for t in tensors if t.dim() >= 2][-2:]
        if len(mats) < 2:
            return None
        a, b = mats
        batch = math.prod(a.shape[:-2]) if a.dim() > 2 else 1
        return (batch, a.shape[-2], b.shape[-1], a.shape[-1])
    if category == "attention" and "aten::" in name:
        qkv = [t for t in tensors if t.dim() == 4]
        qkv = qkv[1:4] if backward else qkv[:3]
        if len(qkv) < 3:
            return None
        q, k, _ = qkv
        return (q.shape[0] * q.shape[1], q.shape[2], k.shape[2], q.shape[3])
    if category == "scan":
        seqs = [t for t in tensors if t.dim() == 3]
        mats = [t for t in tensors if t.dim() == 2]
        if not seqs or not mats:
            return None
        u = seqs[1] if backward and len(seqs) > 1 else seqs[0]
        return (u.shape[0], u.shape[1], u.shape[2], mats[0].shape[-1])
    if category == "conv":
        pair = tensors[1:3] if backward else tensors[:2]
        if len(pair) < 2 or pair[0].dim() < 3:
            return None
        x, w = pair
        groups = next((a for a in reversed(args) if isinstance(a, int)), 1) if args else 1
        return (x.shape[0], x.shape[1], w.shape[0], groups, math.prod(w.shape[2:]), 0)
    return None


class OpRecorder(TorchDispatchMode):
    """Records every operator that reaches it (see the module docstring)."""

    def __init__(self, keep_args: bool = False) -> None:
        super().__init__()
        self.keep_args = keep_args
        self.ops: list[OpRecord] = []
        self.scopes: list[str] = []
        self.block_stack: list[str] = []
        self.forced_scope: list[str] = []  # e.g. the optimizer step's range
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()
        self.registry = flop_formulas()
        self.param_storages: set[int] = set()  # ids of the model's parameter/buffer storages

    # ---- memory
    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._tracked:
            return
        self._tracked.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._tracked.discard(key)
        self.live -= size

    def __enter__(self):
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth == 1:  # not on the re-entries that record a decomposition's parts
            self._kernel_scopes = _KernelScopes(self)
            self._kernel_scopes.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._depth -= 1
        if self._depth == 0:
            self._kernel_scopes.__exit__(*exc)
        return out

    # ---- scopes
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Operators recorded inside count as run inside profiler range ``name``."""
        self.forced_scope.append(name)
        try:
            yield
        finally:
            self.forced_scope.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if name in _QUERIES:
            return func(*args, **kwargs)
        packet = getattr(func, "_overloadpacket", None)
        if packet not in self.registry:
            self.scopes.append(name)
            try:
                with self:
                    out = func.decompose(*args, **kwargs)
            finally:
                self.scopes.pop()
            if out is not NotImplemented:
                return out
        out, ms = self.run(func, args, kwargs)
        self._record(func, name, packet, args, kwargs, out, ms)
        return out

    def run(self, func, args, kwargs) -> tuple[object, float | None]:
        """Run one recorded operator: its output and, in a timing recorder, milliseconds."""
        return func(*args, **kwargs), None

    def _record(self, func, name, packet, args, kwargs, out, ms=None) -> None:
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        in_storages = {id(t.untyped_storage()) for t in inputs}
        fresh = [t for t in outputs if id(t.untyped_storage()) not in in_storages]
        view = getattr(func, "is_view", False) or (not fresh and is_view_name(name))
        if outputs and not fresh and not _mutates(func):
            view = True  # returned its input (a no-op cast, a contiguous tensor's contiguous)
        chain = (*self.forced_scope, *self.scopes, name)
        category = classify(chain)
        flops = 0
        if packet in self.registry:
            flops = int(self.registry[packet](*args, **kwargs, out_val=out))
        nbytes = 0 if view else sum(map(_touched_bytes, inputs)) + sum(map(_touched_bytes, fresh))
        first = next((t for t in inputs if t.is_floating_point()), None)
        if first is None:
            first = next((t for t in outputs if t.is_floating_point()), None)
        record = OpRecord(
            name=name,
            category=category,
            scopes=tuple(chain[:-1]),
            block=self.block_stack[-1] if self.block_stack else None,
            dtype=dtype_name(first.dtype if first is not None else None),
            flops=flops,
            bytes=nbytes,
            view=view,
            dims=op_dims(category, name, _operands(args, kwargs), args),
            ms=ms,
        )
        if self.keep_args:
            record.func = func
            params = self.param_storages
            record.args = tree_map(
                lambda a: (
                    TensorSpec.of(a, id(a.untyped_storage()) in params)
                    if isinstance(a, torch.Tensor)
                    else a
                ),
                (args, kwargs),
            )
        self.ops.append(record)
        for t in fresh:
            self._track(t)


class _KernelScopes(TorchFunctionMode):
    """Python-level calls of kernel functions (``F.rms_norm``, ``F.linear``, ...) as scopes of
    the operators they dispatch: with autograd on, torch decomposes composite operators such
    as ``rms_norm`` before a dispatch mode sees them, but the profiler still sees them run."""

    def __init__(self, recorder: OpRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = "aten::" + getattr(func, "__name__", "").lstrip("_")
        if not (kernel_category(name) or is_cast(name)):
            return func(*args, **(kwargs or {}))
        self.recorder.scopes.append(name)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.recorder.scopes.pop()


def _mutates(func) -> bool:
    schema = getattr(func, "_schema", None)
    if schema is None:
        return False
    return any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks: every child of every ``nn.ModuleList`` in it, by qualified name."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for i, child in enumerate(module):
                out.append((f"{name}.{i}" if name else str(i), child))
    return out


def hook_blocks(model: nn.Module, enter, leave) -> list:
    """Forward pre/post hooks calling ``enter(name)`` / ``leave(name)`` around every block
    (their return values are ignored)."""

    def pre(name):
        return lambda module, args: enter(name) and None

    def post(name):
        return lambda module, args, output: leave(name) and None

    handles = []
    for name, module in block_modules(model):
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    return handles


@contextlib.contextmanager
def isolated_caches() -> Iterator[None]:
    """Module-level caches that fill while fake tensors are about (a model's cached index
    tensors, say) are emptied afterwards, so no fake tensor outlives the recording."""
    caches = list(_module_caches())
    before = {id(c): c.cache_info().currsize for c in caches}
    try:
        yield
    finally:
        for c in _module_caches():
            if c.cache_info().currsize != before.get(id(c), 0):
                c.cache_clear()


def _module_caches():
    from dimbench.registry import get_model, list_models

    modules = {m for m in sys.modules if m == "dimbench" or m.startswith("dimbench.")}
    modules |= {get_model(n).constructor.__module__ for n in list_models()}
    for mod_name in sorted(modules):
        mod = sys.modules.get(mod_name) or importlib.import_module(mod_name)
        for obj in list(vars(mod).values()):
            if isinstance(obj, functools._lru_cache_wrapper) and obj.__module__ == mod_name:
                yield obj


# ---- one configuration's step, recorded


def record_step(
    model_name: str,
    image_size: int,
    batch_size: int = 1,
    dtype: str = "fp32",
    mode: str = "forward",
    device: str = "cpu",
    backends: dict[str, str] | None = None,
    keep_args: bool = False,
    recorder: OpRecorder | None = None,
    real: bool = False,
    overrides: dict | None = None,
) -> OpStream:
    """Record one forward (or train step: forward, MSE loss, backward, AdamW) of a registered
    model; ``dtype`` bf16/fp16 runs under autocast, as the benchmark workloads do. On fake
    tensors of ``device`` (nothing is allocated), or with ``real`` on real ones (a timing
    ``recorder`` then measures each operator where it runs). ``overrides`` are constructor
    keywords on top of the registered configuration (e.g. a shallower ``depth``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    recorder = recorder or OpRecorder(keep_args=keep_args)
    if real:
        return _record_step(model_name, image_size, batch_size, dtype, mode, device, backends,
                            recorder, overrides)  # fmt: skip
    with isolated_caches(), FakeTensorMode(allow_non_fake_inputs=True):
        return _record_step(model_name, image_size, batch_size, dtype, mode, device, backends,
                            recorder, overrides)  # fmt: skip


def _record_step(
    model_name, image_size, batch_size, dtype, mode, device, backends, recorder, overrides=None
):
    from dimbench.registry import create_model, get_model

    latent = get_model(model_name).input_size(image_size)
    dev = torch.device(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    torch.manual_seed(0)
    model = create_model(
        model_name, image_size=image_size, device=dev, **(backends or {}), **(overrides or {})
    )
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    params += sum(b.numel() * b.element_size() for b in model.buffers())
    x = torch.randn(batch_size, model.in_channels, *latent, device=dev)
    t = torch.randint(0, 1000, (batch_size,), device=dev).float()
    y = torch.randint(0, model.num_classes, (batch_size,), device=dev)
    blocks = [name for name, _ in block_modules(model)]
    tensors = [*model.parameters(), *model.buffers()]
    recorder.param_storages = {id(p.untyped_storage()) for p in tensors}
    handles = hook_blocks(
        model, recorder.block_stack.append, lambda name: recorder.block_stack.pop()
    )
    amp = (
        torch.autocast(device_type=dev.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        if mode == "forward":
            model.eval()
            with recorder, torch.inference_mode(), amp:
                model(x, t, y)
        else:
            model.train()
            noise = torch.randn_like(x)
            state = _adamw_state(list(model.parameters()))  # made by the warm-up step
            params += sum(2 * p.numel() * p.element_size() for p in model.parameters())
            with recorder:
                with amp:
                    out = model(x, t, y)
                loss = torch.nn.functional.mse_loss(out[:, : model.in_channels].float(), noise)
                loss.backward()
                with recorder.scope("Optimizer.step#AdamW.step"), torch.no_grad():
                    _adamw_step(state)
    finally:
        for h in handles:
            h.remove()
    return OpStream(
        model=model_name,
        image_size=image_size,
        batch_size=batch_size,
        dtype=dtype,
        mode=mode,
        device=str(dev),
        ops=recorder.ops,
        params_bytes=params,
        peak_live_bytes=recorder.peak,
        blocks=blocks,
    )


def _adamw_state(params: list[torch.Tensor]) -> dict:
    return {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in params}


def _adamw_step(state: dict, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, wd=1e-2) -> None:
    """torch.optim.AdamW's step in its single-tensor form (what it runs on a CPU), without its
    ``.item()`` of the step count, which fake tensors cannot answer; then ``zero_grad``."""
    beta1, beta2 = betas
    bias1, bias2_sqrt = 1 - beta1, math.sqrt(1 - beta2)
    for p, (exp_avg, exp_avg_sq) in state.items():
        if p.grad is None:
            continue
        p.mul_(1 - lr * wd)
        exp_avg.lerp_(p.grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias1)
    for p in state:
        p.grad = None
