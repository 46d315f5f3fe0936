"""How each model of a comparison starts: the set-up its authors would choose at a small
budget, added to its constructor overrides (so the plan records it) with the reason (so
``summary.md`` states it).

- U-ViT's final 3x3 conv (``conv=True``, the S/M/L configs) starts, in the official code, from
  PyTorch's default init: a random 3x3 mixing of the predicted noise that the network must first
  learn to undo. At a few hundred CPU steps it never does (issue 22: U-ViT-S/2 at the cpu preset's
  shape, 240 steps, held-out loss 0.439 as built, 0.094 without the conv, 0.090 with it started as
  the identity; DiT 0.060). The comparison starts the conv as the identity (``conv_init="dirac"``,
  bias 0): the parameters and FLOPs stay the same (so ``--match`` is unchanged) and the model is
  U-ViT's own, where dropping the conv (as U-ViT-H does) would change what is matched.
- DiT needs nothing: its adaLN modulations and final layer start at zero (the official init).
- DiM as built here follows Mamba's ``_init_weights`` (zero Linear biases, N(0, 0.02)
  embeddings); its output is a Linear, which has no identity to learn: nothing is added.

An override given explicitly (``arch`` in a preset, e.g. ``{"conv_init": "torch"}``) wins.
"""

from __future__ import annotations

from dimbench.registry import create_model

UVIT_CONV_REASON = (
    "final 3x3 conv started as the identity (conv_init=dirac, bias 0) instead of PyTorch's "
    "default init: with the default init the epsilon prediction first has to learn to undo a "
    "random conv, which a short run never does (issue 22: held-out loss 0.439 as built vs 0.090 "
    "identity-initialised at 240 steps of the cpu preset); same parameters and FLOPs"
)


def fair_start(
    name: str, family: str, image_size: int, downsample: int, overrides: dict
) -> tuple[dict, str | None]:
    """``overrides`` with the comparison's start-up choice for this model, and its reason (None
    when the model needs none or the overrides already choose)."""
    if family != "uvit" or "conv_init" in overrides:
        return overrides, None
    model = create_model(name, image_size, device="meta", downsample=downsample, **overrides)
    if not hasattr(model.final_layer, "weight"):  # conv=False: no conv to start
        return overrides, None
    return {**overrides, "conv_init": "dirac"}, UVIT_CONV_REASON
