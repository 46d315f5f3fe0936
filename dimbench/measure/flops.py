"""FLOPs and parameters of a registered model, counted on the meta device (no memory, no data).

``torch.utils.flop_counter`` counts matmuls and convolutions (2 FLOPs per multiply-add); the
kernel layer registers formulas for the selective scan and attention, so every family is
counted the same way. The papers' tables (fvcore) count one multiply-add as one FLOP: that is
``gmacs`` here; ``gflops`` = 2 x ``gmacs``. Elementwise work (norms, activations, softmax) is
not counted by either convention.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from dimbench.errors import UsageError
from dimbench.latents import LATENT_DOWNSAMPLE
from dimbench.ops.attention import FLOP_OVERRIDES
from dimbench.registry import create_model, get_model, image_hw

MODES = ("forward", "train")


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    *args,
    **kwargs,
) -> int:
    """Input and weight gradients each cost one forward convolution.

    torch's own formula sizes the weight gradient as a dense conv over all input channels,
    so a depthwise conv (DiM's smoothers and conv1d) is over-counted by its group count.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


FLOP_FORMULAS = {**FLOP_OVERRIDES, torch.ops.aten.convolution_backward: _conv_backward_flop}


def count_flops(
    name: str,
    image_size: int | tuple[int, int] = 256,
    batch_size: int = 1,
    mode: str = "forward",
    downsample: int = LATENT_DOWNSAMPLE,
    **overrides,
) -> dict:
    """Count one forward (``mode="forward"``) or forward + backward (``"train"``) pass.

    Returns ``gmacs``, ``gflops`` (= 2 x gmacs), ``flops`` (int), ``params`` (int, every
    parameter, frozen ones included as the papers count them), ``params_m``, ``breakdown``
    (operator -> GFLOPs), ``tokens`` (sequence length per block, from ``model.seq_len()``) and
    ``seconds`` (the time this count took). Raises the registry's ``UnknownModelError`` for an
    unknown name and ``UsageError`` for a size the models cannot patchify.
    """
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    h, w = image_hw(image_size)
    latent = get_model(name).input_size((h, w), downsample)

    start = time.perf_counter()
    model = create_model(name, (h, w), device="meta", downsample=downsample, **overrides)
    params = sum(p.numel() for p in model.parameters())
    x = torch.empty(batch_size, model.in_channels, *latent, device="meta")
    t = torch.empty(batch_size, device="meta")
    y = torch.zeros(batch_size, dtype=torch.long, device="meta")

    model.train(mode == "train")
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    with counter, torch.set_grad_enabled(mode == "train"):
        out = model(x, t, y)
        if mode == "train":
            out.sum().backward()

    breakdown: dict[str, int] = defaultdict(int)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        breakdown[str(op)] += n
    flops = counter.get_total_flops()
    seq_len = getattr(model, "seq_len", None)  # the built-in models report their length
    return {
        "model": name,
        "image_size": h if h == w else (h, w),
        "batch_size": batch_size,
        "mode": mode,
        "tokens": seq_len() if callable(seq_len) else None,
        "params": params,
        "params_m": params / 1e6,
        "flops": flops,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "breakdown": {k: v / 1e9 for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])},
        "seconds": time.perf_counter() - start,
    }
