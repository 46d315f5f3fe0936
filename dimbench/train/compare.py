"""``dimbench train-compare``: what a comparison is (settings, presets, budget) and how the
backbones are sized against each other (``--match params|flops|none``).

Every model trains under the same conditions: the same data order and per-step noise and
timesteps (the trainer draws them from (seed, step), so identical across models), the same
objective (epsilon MSE on one noise schedule), optimiser recipe, label dropout and batch size.
DiT is built without its learned-sigma output (it would go untrained under epsilon MSE) and
with its in-model label dropout off (the trainer already drops labels). The runner is
:mod:`dimbench.train.compare_run`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from dimbench.errors import UsageError
from dimbench.registry import ModelSpec, get_model

MATCH_MODES = ("none", "params", "flops")
ORDERS = ("sequential", "interleaved")
SAMPLERS = ("dpm++", "ddim")  # deterministic given the noise: same samples on any rank count
QUALITY_METRICS = ("fid", "swd")


@dataclass
class CompareConfig:
    """One comparison. Fields left ``None`` take the preset's value (then the base default)."""

    models: list[str] | None = None
    data: str | None = None
    image_size: int | None = None
    budget: str | None = None
    out: str = "runs/train-compare"
    preset: str | None = None
    match: str | None = None
    batch_size: int | None = None
    seed: int | None = None
    evals: int | None = None  # evaluation points over the budget (plus one at step 0)
    fid_every: int | None = None  # quality metrics at every k-th point (and the last)
    heldout_images: int | None = None
    heldout_timesteps: int | None = None
    metrics: tuple[str, ...] | None = None  # quick-look quality metrics: fid, swd
    fid_gen: int | None = None
    fid_ref_count: int | None = None
    fid_ref: str | None = None  # reference images or statistics (.npz); default: from --data
    sampler: str | None = None
    sample_steps: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    adam_eps: float | None = None
    warmup: int | None = None
    grad_clip: float | None = None
    ema_decay: float | None = None
    ema_warmup: bool | None = None
    label_dropout: float | None = None
    bf16: bool | None = None
    schedule: str | None = None  # None: linear for pixels, scaled_linear for latents
    vae: str | None = None
    order: str | None = None
    ckpt_every: int | None = None
    eval_batch_size: int | None = None
    arch: dict = field(default_factory=dict)  # model name -> constructor overrides (presets)
    device: str = "auto"
    scan_backend: str = "auto"
    attn_backend: str = "auto"
    num_workers: int = 0
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
    "bf16": False,
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
    # image) in 32 px pixel space on the photos, for equal training FLOPs: under an hour on
    # the 2-core CPU, evaluation included.
    "cpu": {
        "models": ["DiM-S/2", "DiT-S/2", "U-ViT-S/2"],
        "data": "photos",
        "image_size": 32,
        "budget": "5e13",
        "match": "flops",
        "batch_size": 16,
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
        "bf16": True,
        "order": "sequential",
        "ckpt_every": 2000,
        "eval_batch_size": 256,
    },
}


def resolve(cfg: CompareConfig) -> CompareConfig:
    """A copy with every unset field taken from the preset, then from the base defaults."""
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise UsageError(f"--preset {cfg.preset!r}: valid: {', '.join(PRESETS)}")
    layers = [BASE, PRESETS.get(cfg.preset, {})] if cfg.preset else [BASE]
    values = {}
    for f in dataclasses.fields(cfg):
        if f.name == "arch":
            continue
        if getattr(cfg, f.name) is None:
            for layer in reversed(layers):
                if f.name in layer:
                    values[f.name] = layer[f.name]
                    break
    out = dataclasses.replace(cfg, **values)
    out.arch = {**PRESETS.get(cfg.preset or "", {}).get("arch", {}), **cfg.arch}
    out.models = list(out.models)
    out.metrics = tuple(out.metrics)
    out.betas = tuple(out.betas)
    validate(out)
    return out


def validate(cfg: CompareConfig) -> None:
    if not cfg.models:
        raise UsageError("--models: name at least one model")
    if len(set(cfg.models)) != len(cfg.models):
        raise UsageError(f"--models: a model is named twice ({' '.join(cfg.models)})")
    if cfg.data is None:
        raise UsageError(
            f"--preset {cfg.preset} needs --data: a .npz/.npy of ImageNet {cfg.image_size} px "
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
    if cfg.schedule is not None and cfg.schedule not in ("linear", "scaled_linear"):
        raise UsageError(f"--schedule {cfg.schedule!r}: valid: linear, scaled_linear")
    unknown = set(cfg.metrics) - set(QUALITY_METRICS)
    if unknown:
        valid = ", ".join(QUALITY_METRICS)
        raise UsageError(f"--metrics {','.join(sorted(unknown))}: valid: {valid}")
    positive = {
        "--image-size": cfg.image_size,
        "--batch-size": cfg.batch_size,
        "--evals": cfg.evals,
        "--fid-every": cfg.fid_every,
        "--heldout-images": cfg.heldout_images,
        "--heldout-timesteps": cfg.heldout_timesteps,
        "--sample-steps": cfg.sample_steps,
        "--ckpt-every": cfg.ckpt_every,
    }
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"{name} must be positive, got {value}")
    if not cfg.lr > 0 or not cfg.adam_eps > 0:
        raise UsageError(f"--lr must be positive, got {cfg.lr}")
    for name, value in (("--weight-decay", cfg.weight_decay), ("--warmup", cfg.warmup)):
        if value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}")
    for name, value in (("--ema-decay", cfg.ema_decay), ("--label-dropout", cfg.label_dropout)):
        if not 0 <= value < 1:
            raise UsageError(f"{name} must be in [0, 1), got {value}")
    if cfg.metrics and (cfg.fid_gen < 2 or cfg.fid_ref_count < 2):
        raise UsageError("--fid-gen and --fid-ref-count must be at least 2")
    if cfg.heldout_timesteps > 1000:
        raise UsageError(f"--heldout-timesteps must be at most 1000, got {cfg.heldout_timesteps}")


# ---- the budget ---------------------------------------------------------------------------

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18}
_TIME = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
}
_NUM = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Budget:
    """How long every model trains: optimisation steps, training FLOPs, or training seconds."""

    unit: str
    value: float

    def __str__(self) -> str:
        if self.unit == "steps":
            return f"{int(self.value)} steps"
        if self.unit == "flops":
            return f"{self.value:.3g} training FLOPs"
        return f"{self.value:g} s of training"


def parse_budget(text: str) -> Budget:
    """``2000`` / ``2000steps`` -> steps; ``2e15``, ``2PF``, ``300TFLOPs`` -> FLOPs;
    ``600s``, ``10m``, ``1.5h`` -> seconds of training (evaluation not counted)."""
    s = str(text).strip().replace("_", "").replace(" ", "")
    steps = re.fullmatch(r"(\d+)(?:steps?)?", s, re.IGNORECASE)
    timed = re.fullmatch(_NUM + r"([a-z]+)", s, re.IGNORECASE)
    flops = re.fullmatch(_NUM + r"(e[+-]?\d+)?([kmgtpe]?)(f|flop|flops)?", s, re.IGNORECASE)
    if steps:
        value, unit = float(steps.group(1)), "steps"
    elif timed and timed.group(2).lower() in _TIME:
        value, unit = float(timed.group(1)) * _TIME[timed.group(2).lower()], "seconds"
    elif flops and any(flops.group(i) for i in (2, 3, 4)):
        scale = _SI[(flops.group(3) or "").lower()]
        value, unit = float(flops.group(1) + (flops.group(2) or "")) * scale, "flops"
    else:
        raise UsageError(
            f"--budget {text!r}: use STEPS (2000), FLOPs (2e15, 2PF, 300TFLOPs) or "
            "SECONDS (600s, 10m, 1h)"
        )
    if value <= 0:
        raise UsageError(f"--budget {text!r} must be positive")
    return Budget(unit, value)


# ---- sizing the models ----------------------------------------------------------------------


@dataclass
class PlannedModel:
    """One backbone of the comparison: registry name, constructor overrides, and its size."""

    name: str
    overrides: dict
    family: str
    width: int
    depth: int
    params: int
    gflops: float  # forward, per image (2 FLOPs per multiply-add)
    train_flops_per_step: int  # forward + backward of one global batch
    match: dict | None = None  # what --match chose, relative to the first model

    @property
    def label(self) -> str:
        return f"{self.name} (w{self.width}, d{self.depth})"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "label": self.label, "slug": self.slug}


def model_shape(model, spec: ModelSpec) -> tuple[int, int, int]:
    """(width, depth, attention heads or 0) of a built model, from what its spec declares."""
    width = int(getattr(model, spec.width)) if spec.width else 0
    heads = int(getattr(model, spec.heads)) if spec.heads else 0
    return width, int(getattr(model, "depth", 0)), heads


def nearest_heads(width: int, heads: int) -> int:
    """The divisor of ``width`` closest to ``heads`` (the larger one on a tie)."""
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - heads), -d))


def _measure(name: str, image_size: int, downsample: int, overrides: dict, batch: int) -> dict:
    from dimbench.measure import count_flops
    from dimbench.registry import create_model

    try:
        fwd = count_flops(name, image_size, 1, mode="forward", downsample=downsample, **overrides)
        train = count_flops(
            name, image_size, batch, mode="train", downsample=downsample, **overrides
        )
        model = create_model(name, image_size, device="meta", downsample=downsample, **overrides)
    except ValueError as e:
        raise UsageError(f"{name} with {overrides}: {e}") from None
    spec = get_model(name)
    width, depth, heads = model_shape(model, spec)
    return {
        "family": spec.family_id,
        "width": width,
        "depth": depth,
        "heads": heads,
        "params": int(fwd["params"]),
        "gflops": float(fwd["gflops"]),
        "train_flops": int(train["flops"]),
    }


def _with_width(overrides: dict, spec: ModelSpec, width: int, heads: int) -> dict:
    if spec.width is None:
        raise UsageError(f"--match: {spec.name} does not declare its width (register_model width=)")
    out = {**overrides, spec.width: width}
    if heads and spec.heads:
        out[spec.heads] = nearest_heads(width, heads)
    return out


def _metric_at(name, image_size, downsample, overrides, spec, width, heads, by) -> float:
    from dimbench.measure import count_flops
    from dimbench.registry import create_model

    ov = _with_width(overrides, spec, width, heads)
    if by == "params":
        model = create_model(name, image_size, device="meta", downsample=downsample, **ov)
        return float(sum(p.numel() for p in model.parameters()))
    return float(count_flops(name, image_size, 1, downsample=downsample, **ov)["flops"])


def match_width(
    name: str,
    image_size: int,
    downsample: int,
    overrides: dict,
    spec: ModelSpec,
    heads: int,
    target: float,
    by: str,
    start_width: int,
) -> tuple[int, float]:
    """The width (a multiple the model accepts) whose params or forward FLOPs per image come
    closest to ``target``; returns (width, value). Depth stays; heads follow the width."""
    step = spec.width_multiple
    cache: dict[int, float] = {}

    def value(k: int) -> float:
        if k not in cache:
            cache[k] = _metric_at(
                name, image_size, downsample, overrides, spec, k * step, heads, by
            )
        return cache[k]

    # bracket the target, starting from the configured width: value(lo) < target <= value(hi)
    lo = hi = max(1, round(start_width / step))
    while value(hi) < target:
        lo, hi = hi, hi * 2
        if hi * step > 1 << 15:
            raise UsageError(f"--match {by}: no width of {name} reaches the target {target:.3g}")
    while lo > 1 and value(lo) >= target:
        lo, hi = max(1, lo // 2), lo
    if value(lo) >= target:  # even the narrowest width reaches it
        hi = lo
    while hi - lo > 1:  # smallest k with value >= target lies in (lo, hi]
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if value(mid) < target else (lo, mid)
    # the size is nearly monotone in the width (DiM's skip fusion changes form at 512): look
    # around the bracket for the closest value
    ks = [k for k in range(hi - 2, hi + 3) if k >= 1]
    best = min(ks, key=lambda k: abs(value(k) - target))
    return best * step, value(best)


def plan_models(
    cfg: CompareConfig, in_channels: int, downsample: int, num_classes: int | None
) -> list[PlannedModel]:
    """Each model's constructor overrides and size; with ``--match`` the widths of all but the
    first model are set so that their params or FLOPs per image match the first model's."""
    specs: list[PlannedModel] = []
    for i, name in enumerate(cfg.models):
        spec = get_model(name)
        spec.input_size(cfg.image_size, downsample)
        overrides = {"in_channels": in_channels, **cfg.arch.get(name, {})}
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        if spec.learn_sigma:
            overrides["learn_sigma"] = False  # epsilon MSE for every model: no sigma output
        m = _measure(name, cfg.image_size, downsample, overrides, cfg.batch_size)
        match = None
        if i > 0 and cfg.match != "none":
            ref = specs[0]
            target = ref.params if cfg.match == "params" else ref.gflops * 1e9
            width, value = match_width(
                name, cfg.image_size, downsample, overrides, spec, m["heads"], target,
                cfg.match, m["width"],
            )  # fmt: skip
            overrides = _with_width(overrides, spec, width, m["heads"])
            before = m["width"]
            m = _measure(name, cfg.image_size, downsample, overrides, cfg.batch_size)
            match = {
                "by": cfg.match,
                "reference": ref.label,
                "target": target,
                "value": value,
                "ratio": value / target,
                "width_from": before,
                "width_to": width,
            }
        specs.append(
            PlannedModel(
                name=name,
                overrides=overrides,
                family=spec.family_id,
                width=m["width"],
                depth=m["depth"],
                params=m["params"],
                gflops=m["gflops"],
                train_flops_per_step=m["train_flops"],
                match=match,
            )
        )
    return specs


def match_summary(specs: list[PlannedModel]) -> list[str]:
    """One line per model: its size and what matching chose."""
    lines = []
    for s in specs:
        line = (
            f"{s.label}: {s.params / 1e6:.2f}M params, {s.gflops:.3f} GFLOPs/image forward, "
            f"{s.train_flops_per_step / 1e9:.1f} GFLOPs per training step"
        )
        if s.match:
            m = s.match
            line += (
                f"; --match {m['by']}: width {m['width_from']} -> {m['width_to']}, "
                f"{(m['ratio'] - 1) * 100:+.1f}% vs {m['reference']}"
            )
        lines.append(line)
    return lines
