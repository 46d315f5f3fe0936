"""U-ViT: All are Worth Words (Bao et al., 2023), as baofff/U-ViT ``libs/uvit.py`` builds it.

Time and class enter as two tokens ([label, time, patches]); a learned position embedding
covers all of them; depth//2 in-blocks, a mid-block and depth//2 out-blocks, each out-block
fusing its long skip with Linear(2D -> D) on cat(x, skip); LayerNorm -> Linear -> unpatchify,
then an optional 3x3 conv on the output channels (``conv_init="dirac"`` starts it as the
identity, bias 0, instead of PyTorch's default init that the official code keeps: the
epsilon prediction then need not wait for the conv to learn the identity). Parameter names
match the official ones, so the published checkpoints (``imagenet256_uvit_huge.pth``, ...) load
with ``load_state_dict(sd)`` (strict) and give the official outputs for the same inputs.

Conventions that differ in name only:
- ``num_classes`` counts real classes (1000 for ImageNet) and the table has one more row, the
  null label ``num_classes`` (the official ImageNet configs write ``num_classes=1001``);
- ``depth`` is, as in the official configs, the number of in- plus out-blocks (H: 28 -> 29
  blocks in all).
Attention runs through ``dimbench.ops.attention`` in the input's dtype (the official code
casts q/k/v to fp32 for torch SDPA). The position embedding is resampled (timm, bicubic) when
``forward`` gets another grid, and when a checkpoint for another grid is loaded.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from torch import nn

from dimbench.models.checkpointing import GradCheckpointing, run_block
from dimbench.registry import register_model

from .layers import Attention, patch_grid, timestep_embedding, unpatchify

CONV_INITS = ("torch", "dirac")  # the final conv: PyTorch's default (official) | identity


class Block(nn.Module):
    """Pre-norm attention + MLP; out-blocks first fuse the long skip."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        skip: bool = False,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_backend=attn_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(GradCheckpointing, nn.Module):
    """U-ViT over a latent of ``input_size`` (any multiple of the patch works at run time)."""

    learn_sigma = False
    extras = 2  # label and time tokens

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        embed_dim: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        num_classes: int = 1000,
        conv: bool = True,
        skip: bool = True,
        attn_backend: str = "auto",
        conv_init: str = "torch",
    ) -> None:
        super().__init__()
        if conv_init not in CONV_INITS:
            raise ValueError(f"conv_init must be one of {', '.join(CONV_INITS)}, got {conv_init!r}")
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if hw[0] % patch_size or hw[1] % patch_size:
            raise ValueError(f"latent size {hw[0]}x{hw[1]} is not divisible by patch {patch_size}")
        if num_classes <= 0:
            raise ValueError("U-ViT here is class-conditional: num_classes must be positive")
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.in_channels = self.out_channels = in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.grid_size = (hw[0] // patch_size, hw[1] // patch_size)

        self.patch_embed = PatchEmbed(
            hw, patch_size, in_channels, embed_dim, bias=True, strict_img_size=False
        )
        self.time_embed = (
            nn.Sequential(
                nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim)
            )
            if mlp_time_embed
            else nn.Identity()
        )
        self.label_emb = nn.Embedding(num_classes + 1, embed_dim)  # + the null label
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        def block(skip_: bool) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, skip_, attn_backend)

        self.in_blocks = nn.ModuleList(block(False) for _ in range(depth // 2))
        self.mid_block = block(False)
        self.out_blocks = nn.ModuleList(block(skip) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_channels)
        self.final_layer = (
            nn.Conv2d(in_channels, in_channels, 3, padding=1) if conv else nn.Identity()
        )

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)
        if conv and conv_init == "dirac":
            nn.init.dirac_(self.final_layer.weight)
            nn.init.zeros_(self.final_layer.bias)
        self.register_load_state_dict_pre_hook(_resample_loaded_pos_embed)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def seq_len(self, input_size: tuple[int, int] | None = None) -> int:
        """Sequence length (patches + 2) for a latent of ``input_size`` (default: construction)."""
        if input_size is None:
            return self.extras + self.grid_size[0] * self.grid_size[1]
        p = self.patch_size
        return self.extras + (input_size[0] // p) * (input_size[1] // p)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, list(grid), list(self.grid_size), num_prefix_tokens=self.extras
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), t (N,) timesteps, y (N,) labels -> (N, C, H, W) epsilon."""
        grid = patch_grid(x, self.patch_size)
        x = self.patch_embed(x)
        time_token = self.time_embed(timestep_embedding(t, self.embed_dim).to(x.dtype))
        label_token = self.label_emb(y)
        x = torch.cat([label_token[:, None], time_token[:, None], x], dim=1)
        x = x + self.pos_embed_for(grid)

        skips = []
        ckpt = self.grad_checkpointing
        for blk in self.in_blocks:
            x = run_block(blk, ckpt, x)
            skips.append(x)
        x = run_block(self.mid_block, ckpt, x)
        for blk in self.out_blocks:
            x = run_block(blk, ckpt, x, skips.pop())

        x = self.decoder_pred(self.norm(x))[:, self.extras :]
        x = unpatchify(x, grid, self.patch_size, self.in_channels)
        return self.final_layer(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _resample_loaded_pos_embed(module: UViT, state_dict: dict, prefix: str, *args) -> None:
    """A checkpoint trained on another (square) grid: resample its embedding to this grid."""
    key = prefix + "pos_embed"
    if key not in state_dict or state_dict[key].shape == module.pos_embed.shape:
        return
    loaded = state_dict[key]
    side = math.isqrt(loaded.shape[1] - module.extras)
    if side * side != loaded.shape[1] - module.extras:
        raise ValueError(
            f"cannot resample {key} of {loaded.shape[1]} tokens: not {module.extras} + a square"
        )
    state_dict[key] = resample_abs_pos_embed(
        loaded, list(module.grid_size), [side, side], num_prefix_tokens=module.extras
    )


def convert_official_state_dict(sd: dict) -> dict:
    """An official U-ViT file -> a state dict for :class:`UViT`.

    The released ``nnet_ema.pth`` / ``imagenet*_uvit_*.pth`` files already use these names;
    this only strips a DDP ``module.`` prefix.
    """
    return {k.removeprefix("module."): v for k, v in sd.items()}


# depth = in-blocks + out-blocks as in the official configs; the mid-block comes on top.
CONFIGS: dict[str, dict] = {
    "T": dict(embed_dim=64, depth=2, num_heads=4),  # tiny, for tests
    "S": dict(embed_dim=512, depth=12, num_heads=8),
    "M": dict(embed_dim=768, depth=16, num_heads=12),
    "L": dict(embed_dim=1024, depth=20, num_heads=16),
    "H": dict(embed_dim=1152, depth=28, num_heads=16, conv=False),
}


def _constructor(config: dict):
    def build(input_size: tuple[int, int] = (32, 32), **overrides) -> UViT:
        return UViT(input_size=input_size, **{**config, **overrides})

    return build


for _size, _config in CONFIGS.items():
    for _patch in (2,) if _size == "T" else (2, 4):
        register_model(
            f"U-ViT-{_size}/{_patch}",
            kernels=("attention",),
            patch_size=_patch,
            width="embed_dim",
            width_multiple=2,
            heads="num_heads",
            depth="depth",
            family="U-ViT",
            baseline=True,
        )(_constructor({**_config, "patch_size": _patch}))
