"""ViM: a Vision-Mamba-style (Zhu et al. 2024, hustvl/Vim) bidirectional Mamba backbone for
diffusion, written against the ``mamba_ssm`` API as a model from the Mamba ecosystem is: its
blocks are ``mamba_ssm``'s ``Mamba`` and ``RMSNorm``, imported from ``mamba_ssm``. On a machine
without mamba_ssm, ``dimbench.compat`` answers those imports with dimbench's kernels; where the
real package imports it runs the blocks, unchanged.

Forward pass: patchify (a p x p conv) + learnable position embedding -> sequence [time token,
class token, patch tokens] (in-context conditioning, as U-ViT and DiM) -> blocks -> RMSNorm ->
linear -> unpatchify (epsilon; no learned variance). A block is bidirectional, as Vim's: one
pre-norm (mamba's fused add + RMSNorm, the residual stream in fp32) and two Mamba layers on the
normalised sequence, one reading the patch tokens in order and one in reverse (both read the
condition tokens first), their outputs summed. ``depth`` counts Mamba layers, as Vim's sizes
do (ViM-S/2: 24 layers of width 384 in 12 blocks); stock ``Mamba`` has no shared-projection
bidirectional mode (Vim's "v2" is a fork), so each direction has its own projections.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from dimbench import compat
from dimbench.models.checkpointing import GradCheckpointing, run_block
from dimbench.models.dim import TimestepMLP, resize_pos_embed
from dimbench.models.layers import patch_grid, unpatchify
from dimbench.registry import register_model

compat.install()  # where mamba_ssm imports on its own this changes nothing: the real one runs
from mamba_ssm.modules.mamba_simple import Mamba  # noqa: E402
from mamba_ssm.ops.triton.layer_norm import RMSNorm  # noqa: E402

Tensor = torch.Tensor

NUM_COND = 2  # time token, class token


def reverse_patches(seq: Tensor, keep: int = NUM_COND) -> Tensor:
    """The sequence with its patch tokens in reverse order and the first ``keep`` in place
    (its own inverse)."""
    return torch.cat([seq[:, :keep], seq[:, keep:].flip(1)], dim=1)


class BiMambaBlock(nn.Module):
    """(hidden, residual) -> (hidden, residual): residual += hidden; h = RMSNorm(residual);
    hidden = Mamba_fwd(h) + reverse(Mamba_bwd(reverse(h)))."""

    def __init__(self, dim: int, layer_idx: int, d_state: int = 16, **mamba_kw) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps=1e-5)
        self.forward_mixer = Mamba(dim, d_state=d_state, layer_idx=layer_idx, **mamba_kw)
        self.backward_mixer = Mamba(dim, d_state=d_state, layer_idx=layer_idx + 1, **mamba_kw)

    def forward(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        normed, residual = self.norm(hidden, residual, prenorm=True, residual_in_fp32=True)
        backward = reverse_patches(self.backward_mixer(reverse_patches(normed)))
        return self.forward_mixer(normed) + backward, residual


class ViM(GradCheckpointing, nn.Module):
    def __init__(
        self,
        input_size: tuple[int, int] = (32, 32),
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 24,
        d_state: int = 16,
        num_classes: int = 1000,
        scan_backend: str = "auto",
        conv_backend: str = "auto",
    ) -> None:
        super().__init__()
        if depth < 2 or depth % 2:
            raise ValueError(f"depth counts Mamba layers in pairs: an even number, got {depth}")
        self.patch_size = patch_size
        self.in_channels = self.out_channels = in_channels
        self.learn_sigma = False
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.grid_size = (input_size[0] // patch_size, input_size[1] // patch_size)
        self.scan_backend = scan_backend
        self.conv_backend = conv_backend

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid_size, hidden_size))
        self.t_embedder = TimestepMLP(hidden_size)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)  # + the null class
        self.blocks = nn.ModuleList(
            BiMambaBlock(hidden_size, layer_idx=2 * i, d_state=d_state) for i in range(depth // 2)
        )
        self.norm_f = RMSNorm(hidden_size, eps=1e-5)
        self.head = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self._init_weights(depth)

    @torch.no_grad()
    def _init_weights(self, n_layer: int) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for block in self.blocks:  # mamba's prenorm-residual rescale of the output projections
            for mixer in (block.forward_mixer, block.backward_mixer):
                nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
                mixer.out_proj.weight /= math.sqrt(n_layer)
        nn.init.zeros_(self.head.weight)  # the model starts by predicting zero noise
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} | {
            n for n, p in self.named_parameters() if n.endswith(("A_log", ".D"))
        }

    def seq_len(self, input_size: tuple[int, int] | None = None) -> int:
        """Tokens the Mamba layers see: the condition tokens and the patch grid."""
        h, w = (
            input_size
            if input_size is not None
            else (
                self.grid_size[0] * self.patch_size,
                self.grid_size[1] * self.patch_size,
            )
        )
        return NUM_COND + (h // self.patch_size) * (w // self.patch_size)

    def _run_block(self, block: BiMambaBlock, hidden: Tensor, residual: Tensor | None):
        # the backends are set around each block call, so a checkpointed block's recomputation
        # in backward runs on them too
        with compat.use_backends(self.scan_backend, self.conv_backend):
            return block(hidden, residual)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        grid = patch_grid(x, self.patch_size)
        patches = self.patch_embed(x.to(self.patch_embed.weight.dtype))  # (B, D, gh, gw)
        patches = patches.permute(0, 2, 3, 1) + resize_pos_embed(self.pos_embed, grid)
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        cond = torch.stack([self.t_embedder(t), self.y_embedder(y)], dim=1)  # (B, 2, D)
        hidden = torch.cat([cond.to(patches.dtype), patches.flatten(1, 2)], dim=1)
        residual = None
        for block in self.blocks:
            run = functools.partial(self._run_block, block)
            hidden, residual = run_block(run, self.grad_checkpointing, hidden, residual)
        out = self.head(self.norm_f(hidden, residual)[:, NUM_COND:])
        return unpatchify(out, grid, self.patch_size, self.out_channels).to(x.dtype)


# ---------------------------------------------------------------------- registry

# Vim's sizes (Zhu et al. 2024, Table 1): Tiny 192, Small 384, Base 768 wide, 24 layers
CONFIGS: dict[str, dict] = {
    "T": dict(hidden_size=192, depth=24),
    "S": dict(hidden_size=384, depth=24),
    "B": dict(hidden_size=768, depth=24),
}


def _constructor(config: dict):
    def build(input_size: tuple[int, int] = (32, 32), **overrides) -> ViM:
        return ViM(input_size=input_size, **{"patch_size": 2, **config, **overrides})

    return build


for _size, _config in CONFIGS.items():
    register_model(
        f"ViM-{_size}/2",
        kernels=("scan", "conv"),
        width="hidden_size",
        width_multiple=8,
        family="ViM",
    )(_constructor(_config))
