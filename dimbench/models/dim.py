"""DiM, Diffusion Mamba (Teng et al., arXiv 2405.14224), as the official code builds it.

Forward pass (REFERENCE.md section 1):
  patchify -> [time token, class token] + learnable position embedding -> first smoother
  (depthwise 3x3 over the patch grid) -> pad tokens after every row and below the last row ->
  sequence [t, c, split tokens, padded grid row-major] -> blocks (RMSNorm + adaLN-single +
  Mamba-1, one scan order per block, a scan switch between blocks, U-ViT long skips) ->
  un-pad -> last smoother -> RMSNorm + final modulation -> linear -> unpatchify (epsilon).

Official checkpoints: ``convert_official_state_dict`` (dim_official.py) maps their state dicts to
this module's names; the released configurations are registered as ``DiM-L/2-imagenet256``,
``DiM-H/2-imagenet256`` and ``DiM-H/2-imagenet512ft`` (the fine-tune fills its pads cyclically,
``pad_layout="cyclic"``; all count timesteps from 1, ``timestep_shift=1``).

Any grid: the token layout, pads and scan indices are built (and cached) for the grid that
``forward`` sees, and the position embedding is resized bilinearly at run time and when a
checkpoint trained at another resolution is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dimbench.models.checkpointing import GradCheckpointing, run_block
from dimbench.models.dim_configs import DIM_CONFIGS, RELEASED_CONFIGS
from dimbench.models.dim_layout import (
    PAD_LAYOUTS,
    ScanOrder,
    TokenLayout,
    pad_vector_index,
    scan_schedule,
    token_layout,
)
from dimbench.models.dim_official import (
    convert_official_state_dict as convert_official_state_dict,  # each model module has one
)
from dimbench.models.layers import timestep_embedding
from dimbench.models.mamba_mixer import MambaMixer
from dimbench.registry import register_model

Tensor = torch.Tensor

ADALN_FREQ_DIM = 256  # sinusoid width fed to the adaLN-single time MLP (PixArt-alpha)


class TimestepMLP(nn.Module):
    """sinusoid(t, 256) -> Linear -> SiLU -> Linear (the adaLN-single time embedder)."""

    def __init__(self, dim: int, freq_dim: int = ADALN_FREQ_DIM) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


class AdaLNSingle(nn.Module):
    """PixArt-alpha adaLN-single (one for all blocks): SiLU(MLP(t) + label) -> Linear(D, 3D)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.t_embedder = TimestepMLP(dim)
        self.y_embedder = nn.Embedding(num_classes + 1, dim)  # + null class
        self.linear = nn.Linear(dim, 3 * dim)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        cond = self.t_embedder(t) + self.y_embedder(y)
        return self.linear(F.silu(cond)).unflatten(-1, (3, -1))  # (B, 3, D): shift, scale, gate


class SkipFusion(nn.Module):
    """U-ViT long skip as DiM fuses it: Linear(cat[h, skip]) up to width 512, else the sum of
    two Linear(D, D), one on the hidden stream and one on the skip."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.concat = dim <= 512
        if self.concat:
            self.linear = nn.Linear(2 * dim, dim)
        else:
            self.hidden_linear = nn.Linear(dim, dim)
            self.skip_linear = nn.Linear(dim, dim)

    def forward(self, hidden: Tensor, skip: Tensor) -> Tensor:
        if self.concat:
            dtype = self.linear.weight.dtype
            return self.linear(torch.cat([hidden.to(dtype), skip.to(dtype)], dim=-1))
        dtype = self.hidden_linear.weight.dtype
        return self.hidden_linear(hidden.to(dtype)) + self.skip_linear(skip.to(dtype))


class DiMBlock(nn.Module):
    """Pre-norm residual block without MLP: out = (1 + gate) * Mamba(RMSNorm(x)(1 + scale) + shift).

    Returns the mixer branch only; the caller keeps the residual stream (fp32) and adds it.
    """

    def __init__(self, dim: int, mixer: MambaMixer, long_skip: bool = False) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.scale_shift_table = nn.Parameter(torch.randn(3, dim) / dim**0.5)
        self.mixer = mixer
        self.skip_fusion = SkipFusion(dim) if long_skip else None

    def forward(self, stream: Tensor, modulation: Tensor) -> Tensor:
        shift, scale, gate = (self.scale_shift_table[None] + modulation).unbind(1)
        fusable = isinstance(self.mixer, MambaMixer) and self.mixer.uses_fused(stream)
        if fusable:  # norm, modulation, mixer and gate as one node
            return self.mixer.block(stream, self.norm.weight, shift, scale, gate, self.norm.eps)
        # RMSNorm(x) * (1 + scale) + shift with the norm's weight folded into the scale
        weight = self.norm.weight
        h = F.rms_norm(stream.to(weight.dtype), weight.shape, eps=self.norm.eps)
        h = torch.addcmul(shift[:, None], h, (weight * (1 + scale))[:, None])
        return (1 + gate[:, None]) * self.mixer(h)


class DiM(GradCheckpointing, nn.Module):
    """Diffusion Mamba backbone: ``forward(x, t, y) -> epsilon`` (B, out_channels, H, W).

    Ablation switches (all on by default, as in the paper): ``pad_tokens`` (row/bottom pads and
    the split tokens), ``scan_directions`` (1: R+ only, 2: R+/R-, 4: R+/R-/C+/C-), ``smoothers``
    (the depthwise 3x3 convs before and after the blocks), ``long_skips``.

    Conventions of the released checkpoints: ``pad_layout`` ("lateral", or "cyclic" for the 512-px
    fine-tune; see dim_layout.py) and ``timestep_shift`` (added to ``t`` in ``forward``: the
    official code trains on timesteps 1..1000 where dimbench's schedules count 0..999, so its
    weights want ``timestep_shift=1``).
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1536,
        depth: int = 49,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        pad_tokens: bool = True,
        scan_directions: int = 4,
        smoothers: bool = True,
        long_skips: bool = True,
        pad_layout: str = "lateral",
        timestep_shift: float = 0.0,
        scan_backend: str = "auto",
        conv_backend: str = "auto",
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {patch_size}")
        if scan_directions not in (1, 2, 4):
            raise ValueError(f"scan_directions must be 1, 2 or 4, got {scan_directions}")
        if pad_layout not in PAD_LAYOUTS:
            raise ValueError(
                f"pad_layout must be one of {', '.join(PAD_LAYOUTS)}, got {pad_layout!r}"
            )
        if long_skips and depth % 2 == 0:
            raise ValueError(f"depth must be odd with long skips (1 + pairs), got {depth}")
        self.input_size = (h, w)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.depth = depth
        self.pad_len = d_conv if pad_tokens else 0  # pads cover the conv1d's receptive field
        self.num_split = self.pad_len
        self.num_cond = 2  # time token, class token
        self.num_prefix = self.num_cond + self.num_split
        self.schedule = scan_schedule(depth, scan_directions)
        self.use_pad_tokens = pad_tokens
        self.scan_directions = scan_directions
        self.use_smoothers = smoothers
        self.use_long_skips = long_skips
        self.pad_layout = pad_layout
        self.timestep_shift = float(timestep_shift)
        dim = hidden_size
        grid = (h // patch_size, w // patch_size)

        self.x_embedder = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.class_embed = nn.Embedding(num_classes + 1, dim)  # the class token; + null class
        self.pos_embed_cond = nn.Parameter(torch.zeros(1, self.num_cond, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, dim))
        self.first_smoother = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if smoothers else None
        self.last_smoother = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if smoothers else None
        if pad_tokens:
            self.pad_tokens = nn.Parameter(torch.randn(self.pad_len, dim) * 0.02)
            self.split_tokens = nn.Parameter(torch.randn(self.num_split, dim) * 0.02)
        self.adaln_single = AdaLNSingle(dim, num_classes)

        # long skips: block 0 stands outside, the first half pushes, the second half pops (LIFO)
        n_pairs = (depth - 1) // 2 if long_skips else 0
        self.push_skip = [1 <= i <= n_pairs for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                DiMBlock(
                    dim,
                    MambaMixer(
                        dim, d_state, d_conv, expand, n_layer=depth, conv_backend=conv_backend
                    ),
                    long_skip=i > depth - 1 - n_pairs,
                )
                for i in range(depth)
            ]
        )
        self.norm_out = nn.RMSNorm(dim, eps=1e-5)
        self.final_modulation = nn.Linear(dim, 2 * dim)  # shift, scale from SiLU(t_tok + c_tok)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels)

        self._init_weights()
        self.scan_backend = scan_backend

    # ------------------------------------------------------------------ set-up

    @property
    def scan_backend(self) -> str:
        return self._scan_backend

    @scan_backend.setter
    def scan_backend(self, backend: str) -> None:
        self._scan_backend = backend
        for block in self.blocks:
            block.mixer.scan_backend = backend

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Mamba's ``_init_weights``: Linear biases zero (not dt_proj's), embeddings N(0, 0.02).

        The mixers re-initialise dt_proj, A_log, D and out_proj (scaled by 1/sqrt(depth))
        themselves; the position embedding starts at zero, pads and split tokens at N(0, 0.02).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters to keep out of weight decay: position embeddings, pad and split tokens,
        and the A_log / D that Mamba marks ``_no_weight_decay``."""
        always = {"pos_embed", "pos_embed_cond", "pad_tokens", "split_tokens"}
        return {
            name
            for name, p in self.named_parameters()
            if name in always or getattr(p, "_no_weight_decay", False)
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from another resolution: resize its grid position embedding to ours
        key = prefix + "pos_embed"
        ckpt = state_dict.get(key)
        own = self.pos_embed
        if (
            isinstance(ckpt, Tensor)
            and ckpt.dim() == 4
            and ckpt.shape[0] == 1
            and ckpt.shape[-1] == own.shape[-1]
            and ckpt.shape[1:3] != own.shape[1:3]
        ):
            state_dict[key] = resize_pos_embed(ckpt, tuple(own.shape[1:3]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ layout

    def layout(self, grid_h: int, grid_w: int, device: torch.device | str) -> TokenLayout:
        """The cached token layout for an ``grid_h x grid_w`` patch grid."""
        return token_layout(grid_h, grid_w, self.pad_len, self.num_prefix, device)

    def seq_len(self, input_size: tuple[int, int] | None = None) -> int:
        """Tokens per block for latents of ``input_size`` (default: the built size)."""
        h, w = input_size or self.input_size
        return self.num_prefix + (h // self.patch_size + self.pad_len) * (
            w // self.patch_size + self.pad_len
        )

    def grid_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """The grid position embedding (1, grid_h, grid_w, D), resized when the grid differs."""
        return resize_pos_embed(self.pos_embed, (grid_h, grid_w))

    # ------------------------------------------------------------------ forward

    def embed(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor, TokenLayout]:
        """Latents -> (the block-input sequence in R+ order, the cond tokens (B, 2, D), layout)."""
        batch, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {p}")
        gh, gw = h // p, w // p
        dtype = self.x_embedder.weight.dtype  # the parameters' dtype (fp32 under autocast)
        t_tok = timestep_embedding(t, self.hidden_size).to(dtype)
        cond = torch.stack([t_tok, self.class_embed(y)], dim=1)
        prefix = cond + self.pos_embed_cond
        grid = self.x_embedder(x).permute(0, 2, 3, 1) + self.grid_pos_embed(gh, gw)
        if self.first_smoother is not None:
            grid = self.first_smoother(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        parts = [prefix.to(grid.dtype)]
        if self.pad_len:
            grid = self.pad_grid(grid)
            parts.append(self.split_tokens.to(grid.dtype).expand(batch, -1, -1))
        parts.append(grid.reshape(batch, -1, grid.shape[-1]))
        return torch.cat(parts, dim=1), cond, self.layout(gh, gw, x.device)

    def pad_grid(self, grid: Tensor) -> Tensor:
        """(B, H, W, D) -> (B, H+k, W+k, D) (k = pad_len): pad vector j fills pad column j of
        every row; the whole pad row j (lateral) or the bottom rows' slots in turn (cyclic)."""
        batch, gh, gw, dim = grid.shape
        k = self.pad_len
        pads = self.pad_tokens.to(grid.dtype)
        cols = pads[None, None].expand(batch, gh, k, dim)
        grid = torch.cat([grid, cols], dim=2)
        if self.pad_layout == "lateral":
            rows = pads[None, :, None].expand(batch, k, gw + k, dim)
        else:
            index = pad_vector_index(gh, gw, k, self.pad_layout, pads.device)[gh:]
            rows = pads[index][None].expand(batch, -1, -1, -1)
        return torch.cat([grid, rows], dim=1)

    def switch(self, seq: Tensor, layout: TokenLayout, src: int, dst: int) -> Tensor:
        """Re-order a sequence from scan order ``src`` to ``dst`` (prefix tokens stay)."""
        index = layout.switch_index(src, dst)
        return seq if index is None else seq.index_select(1, index)

    def run_blocks(self, seq: Tensor, modulation: Tensor, layout: TokenLayout) -> Tensor:
        """The block stack on an R+ sequence; returns residual + last branch, in R+ order."""
        res_dtype = torch.promote_types(seq.dtype, torch.float32)
        residual = seq.to(res_dtype)
        branch = None
        order = ScanOrder.ROW
        skips: list[tuple[Tensor, int]] = []
        for i, block in enumerate(self.blocks):
            stream = residual if branch is None else residual + branch
            if block.skip_fusion is not None:
                skip, skip_order = skips.pop()
                skip = self.switch(skip, layout, skip_order, order)
                stream = block.skip_fusion(stream, skip).to(res_dtype)  # the residual restarts
            stream = self.switch(stream, layout, order, self.schedule[i])
            order = self.schedule[i]
            branch = run_block(block, self.grad_checkpointing, stream, modulation)
            residual = stream
            if self.push_skip[i]:
                skips.append((residual + branch, order))
        out = residual if branch is None else residual + branch
        return self.switch(out, layout, order, ScanOrder.ROW)

    def head(self, seq: Tensor, cond: Tensor, layout: TokenLayout) -> Tensor:
        """R+ sequence -> un-pad -> last smoother -> modulated RMSNorm -> linear -> unpatchify."""
        batch, dim = seq.shape[0], seq.shape[-1]
        grid = seq[:, layout.num_prefix :].reshape(batch, layout.padded_h, layout.padded_w, dim)
        grid = grid[:, : layout.grid_h, : layout.grid_w].to(self.proj_out.weight.dtype)
        if self.last_smoother is not None:
            grid = self.last_smoother(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        shift, scale = self.final_modulation(F.silu(cond.sum(1))).chunk(2, dim=-1)
        grid = self.norm_out(grid.to(self.norm_out.weight.dtype))
        grid = grid * (1 + scale[:, None, None]) + shift[:, None, None]
        out = self.proj_out(grid)  # (B, gh, gw, p*p*C)
        p, c = self.patch_size, self.out_channels
        out = out.reshape(batch, layout.grid_h, layout.grid_w, p, p, c)
        out = torch.einsum("nhwpqc->nchpwq", out)
        return out.reshape(batch, c, layout.grid_h * p, layout.grid_w * p)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x (B, C, H, W) latents, t (B,) timesteps, y (B,) labels (num_classes = null)."""
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        if self.timestep_shift:
            t = t + self.timestep_shift
        seq, cond, layout = self.embed(x, t, y)
        modulation = self.adaln_single(t, y)
        seq = self.run_blocks(seq, modulation, layout)
        return self.head(seq, cond, layout).to(x.dtype)


def resize_pos_embed(pos_embed: Tensor, size: tuple[int, int]) -> Tensor:
    """(1, H, W, D) -> (1, h, w, D) by bilinear interpolation (align_corners=False), as the
    official ``pos_embed_inteplot``; returns the input when the size already matches."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False
    )
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


# ---------------------------------------------------------------------- registry


def _constructor(config: dict) -> Callable[..., DiM]:
    def build(input_size: tuple[int, int] = (32, 32), **overrides) -> DiM:
        return DiM(input_size=input_size, **{"patch_size": 2, **config, **overrides})

    return build


for _name, _config in {**DIM_CONFIGS, **RELEASED_CONFIGS}.items():
    register_model(
        _name,
        kernels=("scan", "conv"),
        width="hidden_size",
        width_multiple=4,
        depth="depth",
        family="DiM",
    )(_constructor(_config))
