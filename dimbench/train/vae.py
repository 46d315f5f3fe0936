"""Optional Stable-Diffusion KL-VAE (diffusers' AutoencoderKL) for on-the-fly latents.

diffusers is an optional dependency (``pip install 'dimbench[vae]'``); it is imported only when
the user points at local VAE weights, and its absence is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dimbench.errors import UsageError


def load_vae(path: str | Path, device: torch.device) -> torch.nn.Module:
    """AutoencoderKL from a local diffusers folder (config.json + weights) or a single file."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UsageError(
            "--vae needs the 'diffusers' package (pip install 'dimbench[vae]')"
        ) from None
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"--vae {path}: no such file or folder")
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        else:
            vae = AutoencoderKL.from_single_file(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad --vae argument
        raise UsageError(
            f"--vae {path}: cannot load AutoencoderKL ({type(e).__name__}: {e})"
        ) from None
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(
    vae: torch.nn.Module, images: torch.Tensor, noise: torch.Tensor, scale: float
) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents, sampling the posterior with the given noise."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    return ((dist.mean + dist.std * noise.to(dist.mean)) * scale).float()


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]."""
    return vae.decode((latents / scale).to(vae.dtype)).sample.float().clamp(-1.0, 1.0)
