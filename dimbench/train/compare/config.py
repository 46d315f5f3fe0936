"""What a train-compare run is: its settings, the presets and base defaults under them, and
their validation (every value checked before anything is loaded or built).

Every model trains under the same conditions: the same data order and per-step noise and
timesteps (the trainer draws them from (seed, step), so identical across models), the same
objective (epsilon MSE on one noise schedule), optimiser recipe, label dropout and batch size.
DiT is built without its learned-sigma output (it would go untrained under epsilon MSE) and
with its in-model label dropout off (the trainer already drops labels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dimbench.errors import UsageError
from dimbench.train.compare.budget import parse_budget
from dimbench.train.config import TrainConfig, check_ranges, check_recipe

MATCH_MODES = ("none", "params", "flops")
ORDERS = ("sequential", "interleaved")
SAMPLERS = ("dpm++", "ddim")  # deterministic given the noise: same samples on any rank count
QUALITY_METRICS = ("fid", "swd")


def unset_recipe(**given) -> TrainConfig:
    """A comparison's training recipe with ``given`` set and the rest unset: None takes the
    preset's value, then BASE's (``resolve``). ``model``, ``steps`` and ``out`` are each model's
    (set when its trainer starts)."""
    unset = dict.fromkeys(("data", "image_size", "batch_size"))  # TrainConfig has defaults
    return TrainConfig(model="", out="", **{**unset, **given})


@dataclass
class CompareConfig:
    """One comparison. Fields left ``None`` take the preset's value (then the base default);
    so do the ``recipe``'s (the training every model gets: data, image size, batch size, seed,
    optimiser, precision, schedule, VAE, device and kernel backends)."""

    models: list[str] | None = None
    budget: str | None = None
    out: str = "runs/train-compare"
    preset: str | None = None
    match: str | None = None
    evals: int | None = None  # evaluation points over the budget (plus one at step 0)
    fid_every: int | None = None  # quality metrics at every k-th point (and the last)
    heldout_images: int | None = None
    heldout_timesteps: int | None = None
    heldout: str | None = None  # a folder of held-out images; default: split from --data
    seeds: int | None = None  # runs per model: seeds recipe.seed, recipe.seed + 1, ...
    metrics: tuple[str, ...] | None = None  # quick-look quality metrics: fid, swd
    fid_gen: int | None = None
    fid_ref_count: int | None = None
    fid_ref: str | None = None  # reference images or statistics (.npz); default: from --data
    sampler: str | None = None
    sample_steps: int | None = None
    order: str | None = None
    eval_batch_size: int | None = None
    arch: dict = field(default_factory=dict)  # model name -> constructor overrides (presets)
    recipe: TrainConfig = field(default_factory=unset_recipe)
    inception_weights: str | None = None
    cache_dir: str | None = None
    progress: bool = True
    command: str = ""


# Base defaults, then the presets on top. Recipe values are the DiM paper's (AdamW 2e-4,
# weight decay 0.03, betas 0.99/0.99, eps 1e-15, clip 1, EMA 0.9999, label dropout 0.1).
BASE: dict = {
    "models": ["DiM-S/2", "DiT-S/2", "U-ViT-S/2"],
    "data": "photos",
    "image_size": 32,
    "budget": None,
    "match": "none",
    "batch_size": 32,
    "seed": 0,
    "seeds": 1,
    "evals": 10,
    "fid_every": 5,
    "heldout_images": 64,
    "heldout_timesteps": 8,
    "metrics": ("fid", "swd"),
    "fid_gen": 256,
    "fid_ref_count": 256,
    "sampler": "dpm++",
    "sample_steps": 25,
    "lr": 2e-4,
    "weight_decay": 0.03,
    "betas": (0.99, 0.99),
    "adam_eps": 1e-15,
    "warmup": None,  # None: min(5000, a tenth of the shortest run; 100 for a time budget)
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
    "ema_warmup": False,
    "label_dropout": 0.1,
    "dtype": "fp32",
    "schedule": None,
    "order": "sequential",
    "ckpt_every": 1000,
    "eval_batch_size": 64,
}

PRESETS: dict[str, dict] = {
    # Tiny models, 32 px photos, a few steps: exercises every part in well under a minute.
    "smoke": {
        "models": ["DiM-T/2", "DiT-T/2", "U-ViT-T/2"],
        "data": "photos",
        "image_size": 32,
        "budget": "6",
        "match": "flops",
        "batch_size": 4,
        "seeds": 1,
        "evals": 2,
        "fid_every": 2,
        "heldout_images": 6,
        "heldout_timesteps": 3,
        "metrics": ("fid", "swd"),
        "fid_gen": 6,
        "fid_ref_count": 12,
        "sample_steps": 3,
        "lr": 1e-3,
        "warmup": 2,
        "ema_decay": 0.9,
        "ema_warmup": True,
        "order": "interleaved",
        "eval_batch_size": 16,
    },
    # Width-reduced S/2 backbones (~9 blocks, DiT and U-ViT widths matched to DiM's FLOPs per
    # image) in 32 px pixel space on the photos, for equal training FLOPs, three seeds: about
    # 30 minutes a seed on a 2-core AVX-512 EPYC, an hour on a 2-core Zen 3 (AVX2).
    "cpu": {
        "models": ["DiM-S/2", "DiT-S/2", "U-ViT-S/2"],
        "data": "photos",
        "image_size": 32,
        "budget": "5e13",
        "match": "flops",
        "batch_size": 16,
        "seeds": 3,
        "evals": 6,
        "fid_every": 3,
        "heldout_images": 32,
        "heldout_timesteps": 8,
        "metrics": ("fid", "swd"),
        "fid_gen": 200,
        "fid_ref_count": 200,
        "sample_steps": 15,
        "lr": 5e-4,
        "warmup": 50,
        "ema_decay": 0.999,
        "ema_warmup": True,
        "order": "interleaved",
        "ckpt_every": 200,
        "arch": {
            "DiM-S/2": {"hidden_size": 160, "depth": 9},
            "DiT-S/2": {"hidden_size": 168, "depth": 8, "num_heads": 6},
            "U-ViT-S/2": {"embed_dim": 160, "depth": 8, "num_heads": 8},
        },
    },
    # The paper's comparison: DiM-H/2 vs DiT-XL/2 vs U-ViT-H/2 on ImageNet 256 latents with
    # the paper's recipe (bf16, batch 768), for a GPU cluster under torchrun.
    "paper": {
        "models": ["DiM-H/2", "DiT-XL/2", "U-ViT-H/2"],
        "data": None,  # ImageNet 256 latents: --data required
        "image_size": 256,
        "budget": "5e19",
        "match": "none",
        "batch_size": 768,
        "evals": 10,
        "fid_every": 2,
        "heldout_images": 1000,
        "heldout_timesteps": 8,
        "metrics": ("fid",),
        "fid_gen": 5000,
        "fid_ref_count": 50000,
        "sample_steps": 50,
        "warmup": 5000,
        "dtype": "bf16",
        "order": "sequential",
        "ckpt_every": 2000,
        "eval_batch_size": 256,
    },
}


def resolve(cfg: CompareConfig) -> CompareConfig:
    """A copy with every unset field (the recipe's too) taken from the preset, then from the
    base defaults."""
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise UsageError(f"--preset {cfg.preset!r}: valid: {', '.join(PRESETS)}")
    layers = [BASE, PRESETS.get(cfg.preset, {})] if cfg.preset else [BASE]
    out = _layered(cfg, layers)
    out.recipe = _layered(cfg.recipe, layers)
    out.arch = {**PRESETS.get(cfg.preset or "", {}).get("arch", {}), **cfg.arch}
    out.models = list(out.models)
    out.metrics = tuple(out.metrics)
    out.recipe.betas = tuple(out.recipe.betas)
    validate(out)
    return out


def _layered(obj, layers: list[dict]):
    """A copy of the dataclass ``obj`` with each None field set from the last layer naming it."""
    values = {}
    for f in dataclasses.fields(obj):
        if getattr(obj, f.name) is None:
            for layer in reversed(layers):
                if f.name in layer:
                    values[f.name] = layer[f.name]
                    break
    return dataclasses.replace(obj, **values)


def validate(cfg: CompareConfig) -> None:
    if not cfg.models:
        raise UsageError("--models: name at least one model")
    if len(set(cfg.models)) != len(cfg.models):
        raise UsageError(f"--models: a model is named twice ({' '.join(cfg.models)})")
    recipe = cfg.recipe
    if recipe.data is None:
        raise UsageError(
            f"--preset {cfg.preset} needs --data: a .npz/.npy of ImageNet {recipe.image_size} px "
            "latents (or a U-ViT feature folder)"
        )
    if cfg.budget is None:
        raise UsageError("--budget is required (STEPS, FLOPs such as 2e15 or 2PF, or 600s/10m)")
    parse_budget(cfg.budget)
    if cfg.match not in MATCH_MODES:
        raise UsageError(f"--match {cfg.match!r}: valid: {', '.join(MATCH_MODES)}")
    if cfg.order not in ORDERS:
        raise UsageError(f"--order {cfg.order!r}: valid: {', '.join(ORDERS)}")
    if cfg.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {cfg.sampler!r}: valid: {', '.join(SAMPLERS)}")
    from dimbench.diffusion.schedule import SCHEDULES  # torch: the CLI imports this module

    if recipe.schedule is not None and recipe.schedule not in SCHEDULES:
        raise UsageError(f"--schedule {recipe.schedule!r}: valid: {', '.join(SCHEDULES)}")
    unknown = set(cfg.metrics) - set(QUALITY_METRICS)
    if unknown:
        valid = ", ".join(QUALITY_METRICS)
        raise UsageError(f"--metrics {','.join(sorted(unknown))}: valid: {valid}")
    positive = {
        "--image-size": recipe.image_size,
        "--batch-size": recipe.batch_size,
        "--evals": cfg.evals,
        "--fid-every": cfg.fid_every,
        "--heldout-images": cfg.heldout_images,
        "--heldout-timesteps": cfg.heldout_timesteps,
        "--seeds": cfg.seeds,
        "--sample-steps": cfg.sample_steps,
        "--ckpt-every": recipe.ckpt_every,
    }
    check_ranges(positive=positive)
    check_recipe(recipe)
    if cfg.metrics and (cfg.fid_gen < 2 or cfg.fid_ref_count < 2):
        raise UsageError("--fid-gen and --fid-ref-count must be at least 2")
    if cfg.heldout_timesteps > 1000:
        raise UsageError(f"--heldout-timesteps must be at most 1000, got {cfg.heldout_timesteps}")
    if cfg.heldout is not None:
        from dimbench.train.compare.heldout import check_heldout_dir

        check_heldout_dir(cfg.heldout)
        if _latent_data(recipe.data) and not recipe.vae:
            raise UsageError(
                f"--heldout {cfg.heldout}: images, but --data {recipe.data} is latents; give "
                "--vae to encode them"
            )


def _latent_data(data: str) -> bool:
    """``--data`` names latents (a .npy/.npz file or a folder of .npy features)."""
    from pathlib import Path

    path = Path(data).expanduser()
    return path.is_file() or (path.is_dir() and any(path.glob("*.npy")))
