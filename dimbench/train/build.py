"""Building a model for training or sampling: the one place that turns a registry name, an
image size and the data's input into an ``nn.Module`` with the CLI's errors.

Used by the trainer, by sampling (``generate.load_for_sampling``) and by train-compare.
"""

from __future__ import annotations

import torch
from torch import nn

from dimbench.errors import UsageError
from dimbench.train.data import DataInfo
from dimbench.train.vae import VAE_CHANNELS, VAE_DOWNSAMPLE


def model_input(info: DataInfo, vae: str | None) -> tuple[int, int]:
    """(channels, downsample) of what the model sees: stored latents, pixels that a VAE
    encodes on the fly, or pixels."""
    if info.latent:
        return info.channels, VAE_DOWNSAMPLE
    if vae:
        return VAE_CHANNELS, VAE_DOWNSAMPLE
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
    scan_backend: str, attn_backend: str, device: torch.device, conv_backend: str = "auto"
) -> None:
    """Refuse a kernel backend that does not exist or cannot run on ``device`` (UsageError)."""
    from dimbench.ops.attention import resolve_attention_backend
    from dimbench.ops.backends import resolve
    from dimbench.ops.scan import resolve_backend

    try:
        resolve_backend(scan_backend, device)
        resolve_attention_backend(attn_backend, torch.empty(0, device="meta"))
        resolve("conv", conv_backend, device)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
