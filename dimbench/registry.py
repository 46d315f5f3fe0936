"""Model names -> constructors, flat, as in DiT's ``models.py``.

Every model module exposes ``MODELS: dict[str, Callable[..., nn.Module]]``. A constructor takes
``input_size`` (the spatial size of ``x``: latents are ``image_size // 8``), ``scan_backend``,
``attn_backend`` and config overrides, and returns a module with ``forward(x, t, y)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from dimbench.errors import UsageError

# Modules that define models; each is optional so a partial checkout still lists the rest.
MODEL_MODULES = ("dimbench.models.dim", "dimbench.baselines.dit", "dimbench.baselines.uvit")

LATENT_DOWNSAMPLE = 8  # Stable-Diffusion KL-VAE: an R-px image is an (R/8)x(R/8)x4 latent


class UnknownModelError(UsageError):
    pass


def _registry() -> dict[str, Callable[..., nn.Module]]:
    models: dict[str, Callable[..., nn.Module]] = {}
    for mod_name in MODEL_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:  # a real missing dependency inside the module
                raise
            continue
        models.update(getattr(mod, "MODELS", {}))
    return models


def list_models() -> list[str]:
    """All registered model names."""
    return sorted(_registry())


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def create_model(
    name: str,
    image_size: int | tuple[int, int] = 256,
    device: str | torch.device | None = None,
    scan_backend: str = "auto",
    attn_backend: str = "auto",
    downsample: int = LATENT_DOWNSAMPLE,
    **overrides,
) -> nn.Module:
    """Build a registered model for ``image_size`` pixels.

    ``device="meta"`` builds it without allocating memory (for FLOP counting).
    ``downsample=1, in_channels=3`` builds a pixel-space model.
    """
    models = _registry()
    if name not in models:
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(sorted(models))}")
    h, w = image_hw(image_size)
    if h % downsample or w % downsample:
        raise ValueError(f"image size {h}x{w} is not divisible by the downsampling {downsample}")
    input_size = (h // downsample, w // downsample)
    with torch.device(device) if device is not None else nullcontext():
        model = models[name](
            input_size=input_size, scan_backend=scan_backend, attn_backend=attn_backend, **overrides
        )
    model.model_name = name
    model.image_size = (h, w)
    return model
