"""Pieces the models share: the timestep sinusoids (DiT, U-ViT and DiM), and self-attention
through dimbench's kernel layer and unpatchify (DiT, U-ViT). Parameter names follow the official
code (``qkv``, ``proj``) so the published checkpoints load unchanged."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dimbench.ops import attention


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear -> ``dimbench.ops.attention`` -> ``proj`` Linear.

    Same parameters and head layout as timm's ViT ``Attention`` (used by DiT) and U-ViT's own
    (channels of ``qkv`` split as (3, heads, head_dim)), but the kernel is picked by
    ``attn_backend`` so every model shares one backend choice and one FLOP accounting.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = False, attn_backend: str = "auto"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_backend = attn_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = attention(q, k, v, backend=self.attn_backend)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE/ADM sinusoids of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin],
    cosines first as in DiT, U-ViT and DiM's PixArt-alpha embedder (an odd ``dim`` ends in a 0)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def unpatchify(x: torch.Tensor, grid: tuple[int, int], patch: int, channels: int) -> torch.Tensor:
    """(N, gh*gw, p*p*C) tokens, channels last within a patch -> (N, C, gh*p, gw*p)."""
    gh, gw = grid
    x = x.reshape(x.shape[0], gh, gw, patch, patch, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], channels, gh * patch, gw * patch)


def patch_grid(x: torch.Tensor, patch: int) -> tuple[int, int]:
    """The token grid of input ``x`` (N, C, H, W); a clear error when H or W is not a multiple."""
    h, w = x.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"input {h}x{w} is not divisible by the patch size {patch}")
    return h // patch, w // patch
