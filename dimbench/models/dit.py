"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, 2023), adaLN-Zero variant.

Built as facebookresearch/DiT ``models.py`` builds it: timm patch embedding and MLP, fixed 2-D
sin-cos position embedding, adaLN-Zero blocks, learned sigma (8 output channels for 4-channel
latents, epsilon first), class-dropout table with a null row (label ``num_classes``), and the
same initialisation. Parameter names match the official ones, so the published checkpoints
(``DiT-XL-2-256x256.pt``, ...) load with ``load_state_dict(sd)`` (strict) and give the official
outputs for the same inputs.

Differences from the official file, none of which changes the function:
- attention goes through ``dimbench.ops.attention`` (backend chosen by ``attn_backend``);
- the position embedding is computed for whatever grid ``forward`` gets (the stored one is used
  at the construction grid), and inputs need not be square;
- in-model label dropout draws on the labels' device. As in the official code, labels are
  dropped inside ``forward`` in training mode; set ``model.y_embedder.dropout_prob = 0`` to
  leave label dropping to the training loop (the null row stays).
"""

from __future__ import annotations

import torch
from timm.layers import Mlp, PatchEmbed
from torch import nn

from dimbench.models.checkpointing import GradCheckpointing, run_block
from dimbench.registry import register_model

from .layers import Attention, patch_grid, timestep_embedding, unpatchify


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(
    dim: int, grid: tuple[int, int], device: torch.device | str | None = None
) -> torch.Tensor:
    """MAE/DiT fixed 2-D embedding, (gh*gw, dim), tokens row-major.

    Token (i, j) (row i, column j) gets [sin, cos](j * omega) then [sin, cos](i * omega) with
    omega_k = 10000^(-k / (dim/4)); computed in float64 as the official numpy code is.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4))

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows = torch.arange(gh, dtype=torch.float64, device=device)
    cols = torch.arange(gw, dtype=torch.float64, device=device)
    ii, jj = torch.meshgrid(rows, cols, indexing="ij")
    return torch.cat([embed_1d(jj), embed_1d(ii)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Sinusoids of t (256 frequencies) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; one extra row (index ``num_classes``) for the null label."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each modulated (shift, scale) and gated by adaLN-Zero."""

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attn_backend: str = "auto"
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True, attn_backend=attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=0,
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        ).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Modulated LayerNorm -> Linear to p*p*C_out per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(GradCheckpointing, nn.Module):
    """Diffusion transformer over a latent of ``input_size`` (any multiple of the patch works)."""

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        attn_backend: str = "auto",
    ) -> None:
        super().__init__()
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if hw[0] % patch_size or hw[1] % patch_size:
            raise ValueError(f"latent size {hw[0]}x{hw[1]} is not divisible by patch {patch_size}")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid_size = (hw[0] // patch_size, hw[1] // patch_size)

        self.x_embedder = PatchEmbed(
            hw, patch_size, in_channels, hidden_size, bias=True, strict_img_size=False
        )
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.grid_size[0] * self.grid_size[1]
        # Fixed, not trained; a (frozen) parameter as in the official code, so checkpoints load.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_ratio, attn_backend) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        self.register_load_state_dict_pre_hook(_replace_foreign_pos_embed)

    def initialize_weights(self) -> None:
        def basic_init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic_init)
        with torch.no_grad():
            self.pos_embed.copy_(
                sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size, self.pos_embed.device)
            )
        w = self.x_embedder.proj.weight.data  # like nn.Linear, not nn.Conv2d
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, the output as zero.
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def seq_len(self, input_size: tuple[int, int] | None = None) -> int:
        """Sequence length for a latent of ``input_size`` (default: the construction size)."""
        if input_size is None:
            return self.grid_size[0] * self.grid_size[1]
        return (input_size[0] // self.patch_size) * (input_size[1] // self.patch_size)

    def pos_embed_for(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        pe = sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, device)
        return pe[None].to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), t (N,) timesteps, y (N,) labels -> (N, C_out, H, W)."""
        grid = patch_grid(x, self.patch_size)
        x = self.x_embedder(x) + self.pos_embed_for(grid, x.device)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = run_block(block, self.grad_checkpointing, x, c)
        x = self.final_layer(x, c)
        return unpatchify(x, grid, self.patch_size, self.out_channels)


def _replace_foreign_pos_embed(module: DiT, state_dict: dict, prefix: str, *args) -> None:
    """A checkpoint from another grid carries another fixed sin-cos table: keep this grid's."""
    key = prefix + "pos_embed"
    if key in state_dict and state_dict[key].shape != module.pos_embed.shape:
        state_dict[key] = module.pos_embed.detach().clone()


def convert_official_state_dict(sd: dict) -> dict:
    """An official DiT file -> a state dict for :class:`DiT`.

    The released ``DiT-XL-2-*.pt`` files already are plain state dicts with the same names; a
    training checkpoint (``{"model", "ema", "opt", "args"}``) gives its EMA weights.
    """
    if "ema" in sd and isinstance(sd["ema"], dict):
        sd = sd["ema"]
    elif "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    return {k.removeprefix("module."): v for k, v in sd.items()}


CONFIGS: dict[str, dict] = {
    "T": dict(depth=2, hidden_size=64, num_heads=4),  # tiny, for tests
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}


def _constructor(config: dict):
    def build(input_size: tuple[int, int] = (32, 32), **overrides) -> DiT:
        return DiT(input_size=input_size, **{**config, **overrides})

    return build


for _size, _config in CONFIGS.items():
    for _patch in (2,) if _size == "T" else (2, 4, 8):
        register_model(
            f"DiT-{_size}/{_patch}",
            kernels=("attention",),
            patch_size=_patch,
            width="hidden_size",
            width_multiple=4,  # the sin-cos position embedding needs a multiple of 4
            heads="num_heads",
            depth="depth",
            parameterisation="eps+sigma",
            schedule="linear",
            family="DiT",
            baseline=True,
        )(_constructor({**_config, "patch_size": _patch}))
