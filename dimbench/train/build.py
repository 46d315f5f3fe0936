"""Building a model for training or sampling: the one place that turns a registry name, an
image size and the data's input into an ``nn.Module`` with the CLI's errors.

Used by the trainer, by sampling (``generate.load_for_sampling``) and by train-compare.
"""

from __future__ import annotations

import torch
from torch import nn

from dimbench.errors import UsageError
from dimbench.latents import LATENT_CHANNELS, LATENT_DOWNSAMPLE
from dimbench.train.data import DataInfo


def model_input(info: DataInfo, vae: str | None) -> tuple[int, int]:
    """(channels, downsample) of what the model sees: stored latents, pixels that a VAE
    encodes on the fly, or pixels."""
    if info.latent:
        return info.channels, LATENT_DOWNSAMPLE
    if vae:
        return LATENT_CHANNELS, LATENT_DOWNSAMPLE
    return 3, 1


def build_model(
    name: str,
    image_size: int,
    downsample: int,
    overrides: dict,
    scan_backend: str = "auto",
    attn_backend: str = "auto",
    device: torch.device | str | None = None,
    conv_backend: str = "auto",
) -> nn.Module:
    """``registry.create_model`` with the CLI's errors: unknown name / bad size -> UsageError."""
    from dimbench.registry import UnknownModelError, create_model

    try:
        model = create_model(
            name,
            image_size,
            device=device,
            scan_backend=scan_backend,
            attn_backend=attn_backend,
            conv_backend=conv_backend,
            downsample=downsample,
            **overrides,
        )
    except UnknownModelError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(f"{name} at {image_size} px: {e}") from None
    # The trainer drops labels itself (seeded per step, the same for every model); DiT's
    # official label embedder would drop them a second time inside forward. Its null row stays.
    embedder = getattr(model, "y_embedder", None)
    if hasattr(embedder, "dropout_prob"):
        embedder.dropout_prob = 0.0
    return model


def check_backends(
    scan_backend: str,
    attn_backend: str,
    device: torch.device,
    conv_backend: str = "auto",
    dtype: str | torch.dtype | None = None,
) -> dict[str, str]:
    """Resolve the backend of every kernel a model can declare (``registry.KERNELS``) for
    ``device`` and ``dtype`` (None: float32) through ``dimbench.ops.backends.resolve``; one that
    does not exist or cannot run there is a ``BackendError`` (a UsageError). Returns the
    concrete backends, keyed by kernel."""
    from dimbench.ops.backends import resolve
    from dimbench.registry import KERNELS

    asked = {"scan": scan_backend, "attention": attn_backend, "conv": conv_backend}
    return {kernel: resolve(kernel, asked[kernel], device, dtype) for kernel in KERNELS}
