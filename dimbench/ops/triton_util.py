"""What the Triton kernels (scan_triton, conv_triton) share: availability and interpreter mode.

Nothing here imports triton at module level, so ``import dimbench.ops`` stays fast and works
without it. ``TRITON_INTERPRET=1`` (read by Triton when a kernel is decorated, i.e. when the
kernel module is first imported) runs the kernels on CPU tensors through Triton's numpy
interpreter: slow, for testing the kernels without a GPU.
"""

from __future__ import annotations

import functools
import os

_TRUE = ("1", "true", "on", "yes", "y")  # the values triton's getenv_bool accepts


def interpreting() -> bool:
    """True when TRITON_INTERPRET asks Triton to interpret kernels instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@functools.cache
def triton_version() -> str | None:
    try:
        import triton
    except Exception:
        return None
    return str(triton.__version__)


@functools.cache
def unavailable_reason() -> str | None:
    """None when the Triton kernels can run here (a CUDA GPU, or the interpreter), else why not."""
    if triton_version() is None:
        return "triton is not installed"
    if interpreting():
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on the CPU, slowly)"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return f"needs a GPU of compute capability >= 8.0, this one is {major}.x"
    return None


def device_types() -> tuple[str, ...]:
    """Where the kernels run: CUDA tensors, and CPU tensors too when interpreting."""
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def vectorize_interpreter_scan() -> None:
    """Make the interpreter's ``tl.associative_scan`` fold whole slices along the scan axis.

    Triton 3.x's interpreter applies a custom combine function one element at a time (about
    100 us per element), which makes a (channels, state, time) tile scan take seconds. This
    replacement folds along the axis with the same combine function applied to whole slices:
    the same left-to-right order, so the same results, a few hundred times faster. Only the
    interpreter is touched; compiled kernels never see it.
    """
    try:
        import numpy as np
        from triton.runtime import interpreter
    except Exception:
        return
    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or getattr(scan_ops, "_dimbench_vectorized", False):
        return

    def generic_scan(self, inputs):
        datas = [arg.handle.data for arg in inputs]
        outs = [np.empty_like(d) for d in datas]
        acc = None
        for i in range(datas[0].shape[self.axis]):
            index = [slice(None)] * datas[0].ndim
            index[self.axis] = i
            index = tuple(index)
            pairs = zip(datas, inputs, strict=True)
            cur = tuple(self.to_tensor(d[index], arg.dtype) for d, arg in pairs)
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for out, a in zip(outs, acc, strict=True):
                out[index] = np.reshape(a.handle.data, out[index].shape)
        return [self.to_tensor(out, arg.dtype) for out, arg in zip(outs, inputs, strict=True)]

    scan_ops.generic_scan = generic_scan
    scan_ops._dimbench_vectorized = True
