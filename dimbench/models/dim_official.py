"""Official DiM checkpoints (tyshiwo1/DiM-DiffusionMamba at 292b228) for dimbench's DiM.

The official network is ``mamba_attn_diff/models/mamba_2d.py::Mamba2DModel`` (a diffusers 0.25
``Transformer2DModel`` subclass whose parent's own layers are all replaced or set to None), built by
``utils.get_nnet`` from ``configs/imagenet256_L_DiM.py``, ``imagenet256_H_DiM.py``,
``imagenet512_H_DiM_ft.py`` and ``cifar10_S_DiM.py``. A release is its ``state_dict()`` saved as
``nnet.pth`` / ``nnet_ema.pth`` by ``utils.TrainState.save``: a plain dict of tensors, with a DDP
``module.`` prefix when it was saved from a wrapped model. It loads with ``weights_only=True``.

Key scheme, official -> dimbench (``{i}`` a block index, ``k`` = d_conv = 3 pad vectors), and
the official file and class that define each name:

- ``pos_embed.proj.{weight,bias}`` -> ``x_embedder.*``
  (mamba_2d.py: ``Mamba2DModel.pos_embed = UViTPatchEmbed``, its ``proj`` Conv2d)
- ``label_emb.weight`` -> ``class_embed.weight`` (mamba_2d.py: ``Mamba2DModel.label_emb``)
- ``additional_embed`` (1, 2 + H*W, D) -> ``pos_embed_cond`` (1, 2, D) and ``pos_embed``
  (1, H, W, D), a reshape (mamba_2d.py: ``Mamba2DModel.additional_embed``)
- ``adaln_single.emb.timestep_embedder.linear_{1,2}.*`` -> ``adaln_single.t_embedder.fc{1,2}.*``
  (normalization.py: ``AdaRMSNormSingle.emb = PixArtAlphaEmbeddings``, diffusers
  ``TimestepEmbedding``)
- ``adaln_single.emb.class_embedder.embedding_table.weight`` -> ``adaln_single.y_embedder.weight``
  (normalization.py: ``PixArtAlphaEmbeddings.class_embedder = LabelEmbedding``)
- ``adaln_single.linear.*`` -> the same (normalization.py: ``AdaRMSNormSingle.linear``)
- ``a4m_adapter.{first,last}_smoother.*`` -> ``{first,last}_smoother.*``
  (adapter_attn4mamba.py: ``AdapterAttnForMamba.first_smoother`` / ``last_smoother``)
- ``a4m_adapter.pad_token`` (1, D, k) -> ``pad_tokens`` (k, D), a transpose
  (``AdapterAttnForMamba.pad_token``; column j is pad vector j)
- ``a4m_adapter.pad_token_dec_split`` (1, k, D) -> ``split_tokens`` (k, D)
  (``AdapterAttnForMamba.pad_token_dec_split``)
- ``transformer_blocks.{i}.norm1.norm.weight`` -> ``blocks.{i}.norm.weight`` (attention.py:
  ``BasicMambaBlock.norm1`` = normalization.py ``FusedAddRMSNorm``, its ``norm`` mamba RMSNorm)
- ``transformer_blocks.{i}.scale_shift_table`` -> ``blocks.{i}.scale_shift_table``
  (``BasicMambaBlock.scale_shift_table``)
- ``transformer_blocks.{i}.attn1.{in_proj.weight, conv1d.*, x_proj.weight, dt_proj.*, A_log, D,
  out_proj.weight}`` -> ``blocks.{i}.mixer.*``, same names
  (``BasicMambaBlock.attn1`` = the repo's mamba_ssm/modules/mamba_simple.py ``Mamba``)
- ``transformer_blocks.{i}.skip_linear.*`` (D <= 512: Linear(2D, D) on cat[h, skip])
  -> ``blocks.{i}.skip_fusion.linear.*``
- ``transformer_blocks.{i}.skip_linear.{0,1}.*`` (D > 512: Linear on h, Linear on skip)
  -> ``blocks.{i}.skip_fusion.{hidden,skip}_linear.*``
- ``norm_out.norm.weight`` -> ``norm_out.weight`` (mamba_2d.py: ``Mamba2DModel.norm_out``)
- ``proj_out_1.*`` -> ``final_modulation.*``; ``proj_out_2.*`` -> ``proj_out.*`` (mamba_2d.py)

At depth 49 this is 657 official keys for 658 dimbench ones (``additional_embed`` splits in two);
every key is mapped, none is dropped. The converted ``pos_embed`` keeps the checkpoint's grid
(H = floor(sqrt(N)), W = N // H, as the official ``pos_embed_into_2d``); ``DiM`` resizes it
bilinearly while loading into a model built for another grid, as the official
``utils.load_pretrained_model`` / ``pos_embed_inteplot`` does.

What the weights do not record, taken from the official code and configs:
- timesteps: the official trainer (``train_ldm_discrete.py``) feeds n in 1..1000 for the noise
  level dimbench calls n - 1, so the weights run with ``timestep_shift=1``;
- the pad layout: ``pad_token_schedules`` is ``['dec_split', 'lateral']`` except in the 512-px
  fine-tune (``['dec_split', 'rho_pad']``, ``pad_layout="cyclic"``); an H/2 checkpoint at a 32x32
  grid is taken to be that fine-tune;
- 4 scan orders (``scan_pattern_len=3``), the first block outside the skips
  (``encoder_start_blk_id=1``), SD-VAE latents scaled by 0.18215 on the scaled-linear schedule.
The CIFAR-10 config (pixel space) converts and loads, but its ``is_align_exchange_q_kv=True``
moves the split tokens behind the patches in every other block and it trains a continuous-time
SDE: dimbench does not reproduce it, and ``as_dimbench_checkpoint`` refuses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dimbench.errors import UsageError
from dimbench.latents import LATENT_CHANNELS, LATENT_DOWNSAMPLE, SD_LATENT_SCALE
from dimbench.models.dim_configs import DIM_CONFIGS, RELEASED_CONFIGS
from dimbench.torch_files import load_torch_file

Tensor = torch.Tensor

DDP_PREFIX = "module."
EXTRA_TOKENS = 2  # Mamba2DModel.extra_len: the time and class tokens ahead of the patches
TIMESTEP_SHIFT = 1  # official timestep n is dimbench's n - 1
FINETUNE_512 = (1536, 49, (32, 32))  # width, depth, grid of the cyclic-pad 512-px release

_TOP = {
    "pos_embed.proj.weight": "x_embedder.weight",
    "pos_embed.proj.bias": "x_embedder.bias",
    "label_emb.weight": "class_embed.weight",
    "adaln_single.emb.timestep_embedder.linear_1.weight": "adaln_single.t_embedder.fc1.weight",
    "adaln_single.emb.timestep_embedder.linear_1.bias": "adaln_single.t_embedder.fc1.bias",
    "adaln_single.emb.timestep_embedder.linear_2.weight": "adaln_single.t_embedder.fc2.weight",
    "adaln_single.emb.timestep_embedder.linear_2.bias": "adaln_single.t_embedder.fc2.bias",
    "adaln_single.emb.class_embedder.embedding_table.weight": "adaln_single.y_embedder.weight",
    "adaln_single.linear.weight": "adaln_single.linear.weight",
    "adaln_single.linear.bias": "adaln_single.linear.bias",
    "a4m_adapter.first_smoother.weight": "first_smoother.weight",
    "a4m_adapter.first_smoother.bias": "first_smoother.bias",
    "a4m_adapter.last_smoother.weight": "last_smoother.weight",
    "a4m_adapter.last_smoother.bias": "last_smoother.bias",
    "norm_out.norm.weight": "norm_out.weight",
    "proj_out_1.weight": "final_modulation.weight",
    "proj_out_1.bias": "final_modulation.bias",
    "proj_out_2.weight": "proj_out.weight",
    "proj_out_2.bias": "proj_out.bias",
}
_MIXER = (
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
)
_BLOCK = {
    "norm1.norm.weight": "norm.weight",
    "scale_shift_table": "scale_shift_table",
    **{f"attn1.{name}": f"mixer.{name}" for name in _MIXER},
    "skip_linear.weight": "skip_fusion.linear.weight",
    "skip_linear.bias": "skip_fusion.linear.bias",
    "skip_linear.0.weight": "skip_fusion.hidden_linear.weight",
    "skip_linear.0.bias": "skip_fusion.hidden_linear.bias",
    "skip_linear.1.weight": "skip_fusion.skip_linear.weight",
    "skip_linear.1.bias": "skip_fusion.skip_linear.bias",
}
# reshaped rather than renamed: _reshape_in, and back in to_official_state_dict
_RESHAPED = ("additional_embed", "a4m_adapter.pad_token", "a4m_adapter.pad_token_dec_split")
_OFFICIAL_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
_DIMBENCH_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_TOP_BACK = {v: k for k, v in _TOP.items()}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}


# ---------------------------------------------------------------------- recognising a file


def strip_ddp_prefix(sd: Mapping) -> dict:
    """The state dict without the ``module.`` prefix a DDP-wrapped model saves."""
    return {k.removeprefix(DDP_PREFIX) if isinstance(k, str) else k: v for k, v in sd.items()}


def is_official_state_dict(obj: object) -> bool:
    """Whether ``obj`` looks like an official DiM state dict (a Mamba ``attn1`` in its blocks)."""
    if not isinstance(obj, Mapping):
        return False
    return any(
        isinstance(k, str)
        and k.removeprefix(DDP_PREFIX).startswith("transformer_blocks.")
        and k.endswith(".attn1.A_log")
        for k in obj
    )


@dataclass(frozen=True)
class OfficialConfig:
    """What an official state dict's shapes say about the model that wrote it."""

    hidden_size: int
    depth: int
    patch_size: int
    in_channels: int
    out_channels: int
    num_classes: int
    grid: tuple[int, int]
    d_state: int
    d_conv: int
    expand: int

    @property
    def latent(self) -> bool:
        return self.in_channels == LATENT_CHANNELS

    @property
    def downsample(self) -> int:
        return LATENT_DOWNSAMPLE if self.latent else 1

    @property
    def image_size(self) -> tuple[int, int]:
        scale = self.patch_size * self.downsample
        return self.grid[0] * scale, self.grid[1] * scale

    @property
    def pad_layout(self) -> str:
        return "cyclic" if (self.hidden_size, self.depth, self.grid) == FINETUNE_512 else "lateral"

    @property
    def size_name(self) -> str:
        """The registered DiM size of this width and depth (``DiM-H/2``, ...), or a description."""
        for name, cfg in DIM_CONFIGS.items():
            if (cfg["hidden_size"], cfg["depth"], self.patch_size) == (
                self.hidden_size,
                self.depth,
                2,
            ):
                return name
        return "DiM"

    def describe(self) -> str:
        h, w = self.image_size
        size = f"{h} px" if h == w else f"{h}x{w} px"
        space = "" if self.latent else " pixel-space"
        patch = "" if self.size_name != "DiM" else f", patch {self.patch_size}"
        return (
            f"official {self.size_name} {size}{space} checkpoint "
            f"(depth {self.depth}, width {self.hidden_size}{patch})"
        )

    def model_name(self) -> str:
        """The registry name to build: a released configuration's, else the closest DiM size."""
        for name, cfg in RELEASED_CONFIGS.items():
            if not self.model_overrides_for(cfg):
                return name
        if self.size_name in DIM_CONFIGS:
            return self.size_name
        same_width = [n for n, c in DIM_CONFIGS.items() if c["hidden_size"] == self.hidden_size]
        return same_width[0] if same_width else "DiM-S/2"

    def model_overrides(self) -> dict:
        """``create_model`` overrides that build this model from ``model_name()``; the pad layout
        and the timestep shift are always spelled out."""
        name = self.model_name()
        base = RELEASED_CONFIGS.get(name) or DIM_CONFIGS[name]
        return {
            **self.model_overrides_for(base),
            "pad_layout": self.pad_layout,
            "timestep_shift": TIMESTEP_SHIFT,
        }

    def model_overrides_for(self, config: dict) -> dict:
        """The constructor arguments in which this checkpoint differs from a registered config."""
        wanted = {
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "patch_size": self.patch_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "learn_sigma": self.out_channels == 2 * self.in_channels,
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "pad_layout": self.pad_layout,
            "timestep_shift": TIMESTEP_SHIFT,
        }
        defaults = {**_DIM_DEFAULTS, **config}
        return {k: v for k, v in wanted.items() if defaults.get(k) != v}


# DiM's constructor defaults for what a registered config does not set (patch 2 comes from the
# registry's constructor)
_DIM_DEFAULTS = dict(
    patch_size=2,
    in_channels=4,
    num_classes=1000,
    learn_sigma=False,
    d_state=16,
    d_conv=3,
    expand=2,
    pad_layout="lateral",
    timestep_shift=0,
)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise UsageError(f"not an official DiM state dict: no {key!r}")
    value = sd[key]
    if not isinstance(value, Tensor):
        raise UsageError(f"not an official DiM state dict: {key!r} is not a tensor")
    return tuple(value.shape)


def official_grid(num_patches: int) -> tuple[int, int]:
    """The patch grid of an ``additional_embed`` with ``num_patches`` patch rows (official
    ``pos_embed_into_2d``: H = floor(sqrt(N)), W = N // H)."""
    h = math.isqrt(num_patches)
    if h == 0 or h * (num_patches // h) != num_patches:
        raise UsageError(f"additional_embed has {num_patches} patch positions: not an H x W grid")
    return h, num_patches // h


def detect_official_config(sd: Mapping) -> OfficialConfig:
    """Read the configuration off an official state dict's shapes (one-line UsageError if they do
    not describe a DiM that dimbench can build)."""
    sd = strip_ddp_prefix(sd)
    if not is_official_state_dict(sd):
        raise UsageError("not an official DiM state dict: no transformer_blocks.*.attn1.A_log")
    width, in_channels, patch, _ = _shape(sd, "pos_embed.proj.weight")
    depth = 1 + max(
        int(m.group(1)) for k in sd if (m := _OFFICIAL_BLOCK_KEY.fullmatch(str(k))) is not None
    )
    out_features = _shape(sd, "proj_out_2.weight")[0]
    if out_features % (patch * patch):
        raise UsageError(f"proj_out_2 has {out_features} outputs: not patch {patch}^2 x channels")
    out_channels = out_features // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels):
        raise UsageError(f"{out_channels} output channels for {in_channels} input channels")
    n_rows, n_cond_patches, embed_width = _shape(sd, "additional_embed")
    if n_rows != 1 or embed_width != width or n_cond_patches <= EXTRA_TOKENS:
        raise UsageError(f"additional_embed of shape {(n_rows, n_cond_patches, embed_width)}")
    d_inner, d_state = _shape(sd, "transformer_blocks.0.attn1.A_log")
    d_conv = _shape(sd, "transformer_blocks.0.attn1.conv1d.weight")[-1]
    dt_rank = _shape(sd, "transformer_blocks.0.attn1.dt_proj.weight")[1]
    if d_inner % width or dt_rank != math.ceil(width / 16):
        raise UsageError(
            f"a Mamba mixer with d_inner {d_inner}, dt_rank {dt_rank} at width {width}"
        )
    pad = _shape(sd, "a4m_adapter.pad_token")
    split = _shape(sd, "a4m_adapter.pad_token_dec_split")
    if pad != (1, width, d_conv) or split != (1, d_conv, width):
        raise UsageError(
            f"pad tokens {pad} and split tokens {split}: dimbench has d_conv = {d_conv} of each"
        )
    for key in ("a4m_adapter.first_smoother.weight", "a4m_adapter.last_smoother.weight"):
        _shape(sd, key)
    num_classes = _shape(sd, "label_emb.weight")[0] - 1
    return OfficialConfig(
        hidden_size=width,
        depth=depth,
        patch_size=patch,
        in_channels=in_channels,
        out_channels=out_channels,
        num_classes=num_classes,
        grid=official_grid(n_cond_patches - EXTRA_TOKENS),
        d_state=d_state,
        d_conv=d_conv,
        expand=d_inner // width,
    )


# ---------------------------------------------------------------------- the conversion


def convert_official_state_dict(sd: Mapping) -> dict:
    """An official DiM state dict (``nnet.pth`` / ``nnet_ema.pth``, with or without ``module.``)
    -> a state dict that a ``DiM`` of its configuration loads with ``strict=True``.

    Build the model with ``load_official_weights`` (or ``detect_official_config``), which also
    sets the pad layout and ``timestep_shift=1`` that the official weights were trained with.
    """
    sd = strip_ddp_prefix(sd)
    config = detect_official_config(sd)
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in _RESHAPED:
            out.update(_reshape_in(key, value))
        elif (name := _dimbench_name(key)) is not None:
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise UsageError(
            f"the {config.describe()} has keys dimbench's DiM has no place for: "
            f"{', '.join(map(str, unknown[:3]))}{more}"
        )
    return out


def to_official_state_dict(sd: Mapping) -> dict:
    """The inverse: a dimbench DiM state dict -> the official ``Mamba2DModel`` key scheme (the
    grid position embedding is flattened row-major behind the two condition-token rows)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in ("pos_embed_cond", "pos_embed"):
            continue
        if key == "pad_tokens":
            out["a4m_adapter.pad_token"] = value.t()[None].contiguous()
        elif key == "split_tokens":
            out["a4m_adapter.pad_token_dec_split"] = value[None].contiguous()
        elif key in _TOP_BACK:
            out[_TOP_BACK[key]] = value
        elif (m := _DIMBENCH_BLOCK_KEY.fullmatch(key)) and m.group(2) in _BLOCK_BACK:
            out[f"transformer_blocks.{m.group(1)}.{_BLOCK_BACK[m.group(2)]}"] = value
        else:
            raise UsageError(f"{key!r} has no counterpart in the official DiM")
    grid = sd["pos_embed"]
    out["additional_embed"] = torch.cat(
        [sd["pos_embed_cond"], grid.reshape(1, -1, grid.shape[-1])], dim=1
    )
    return out


def _dimbench_name(key: str) -> str | None:
    if key in _TOP:
        return _TOP[key]
    m = _OFFICIAL_BLOCK_KEY.fullmatch(key)
    if m and m.group(2) in _BLOCK:
        return f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"
    return None


def _reshape_in(key: str, value: Tensor) -> dict[str, Tensor]:
    if key == "additional_embed":  # (1, 2 + H*W, D) -> (1, 2, D) and (1, H, W, D)
        h, w = official_grid(value.shape[1] - EXTRA_TOKENS)
        cond, grid = value[:, :EXTRA_TOKENS], value[:, EXTRA_TOKENS:]
        return {"pos_embed_cond": cond.contiguous(), "pos_embed": grid.reshape(1, h, w, -1)}
    if key == "a4m_adapter.pad_token":  # (1, D, k): column j is pad vector j
        return {"pad_tokens": value[0].t().contiguous()}
    return {"split_tokens": value[0].contiguous()}  # (1, k, D)


# ---------------------------------------------------------------------- files and checkpoints


def as_dimbench_checkpoint(obj: Mapping, path: str | Path | None = None) -> dict:
    """An official state dict -> a dimbench checkpoint dict (``meta``, ``model``, ``ema``) that
    ``dimbench sample --ckpt`` and ``train --init-from`` take like one of their own."""
    where = f"{path}: " if path is not None else ""
    sd = strip_ddp_prefix(obj)
    try:
        config = detect_official_config(sd)
        weights = convert_official_state_dict(sd)
    except UsageError as e:
        raise UsageError(f"{where}{e}") from None
    if not config.latent:
        raise UsageError(
            f"{where}this is an {config.describe()}: dimbench reproduces the ImageNet latent "
            "releases only (the CIFAR-10 config alternates its split tokens' position, "
            "is_align_exchange_q_kv, and trains a continuous-time SDE)"
        )
    meta = {
        "format": "official-dim",
        "official": config.describe(),
        "official_config": asdict(config),
        "source": str(path) if path is not None else None,
        "model": config.model_name(),
        "family": "dim",
        "image_size": list(config.image_size),
        "downsample": config.downsample,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_classes": config.num_classes,
        "learn_sigma": config.out_channels == 2 * config.in_channels,
        "model_overrides": config.model_overrides(),
        "schedule": "scaled_linear",
        "loss": "mse",
        "latent": True,
        "latent_scale": SD_LATENT_SCALE,
        "vae": None,
        "data": None,
        "data_kind": "official",
        "data_classes": config.num_classes,
    }
    # the file is either the EMA or the raw weights; it serves as both
    return {"meta": meta, "model": weights, "ema": weights}


def load_official_weights(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[str, dict, dict]:
    """An official ``nnet_ema.pth`` -> ``(model_name, create_kwargs, state_dict)``:
    ``create_model(model_name, **create_kwargs).load_state_dict(state_dict)`` rebuilds it."""
    path = Path(path)
    obj = load_torch_file(path, map_location)
    if not is_official_state_dict(obj):
        raise UsageError(f"{path} is not an official DiM checkpoint (no Mamba blocks)")
    ckpt = as_dimbench_checkpoint(obj, path)
    meta = ckpt["meta"]
    h, w = meta["image_size"]
    create_kwargs = {
        "image_size": h if h == w else (h, w),
        "downsample": meta["downsample"],
        **meta["model_overrides"],
    }
    return meta["model"], create_kwargs, ckpt["ema"]
