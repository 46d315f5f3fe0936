"""The training configuration, its paper defaults, and how a resumed run reconciles with it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dimbench.compile import check_compiler
from dimbench.devices import DEFAULT_DEVICE
from dimbench.errors import UsageError
from dimbench.latents import SD_LATENT_SCALE

# The DiM paper's ImageNet recipe (REFERENCE.md section 1); ``warmup`` is 5000 steps there and
# defaults here to min(5000, steps // 10) so that short runs reach the peak learning rate.
PAPER_DEFAULTS = {
    "lr": 2e-4,
    "weight_decay": 0.03,
    "betas": (0.99, 0.99),
    "adam_eps": 1e-15,
    "grad_clip": 1.0,
    "ema_decay": 0.9999,
    # timm's decay warm-up, 1 - (1 + step)^(-2/3) capped at ema_decay: without it a 300-step
    # run's EMA still holds 97% of the initial weights (0.9999^300) and samples pure noise;
    # from about 1e5 steps on the warm-up no longer matters
    "ema_warmup": True,
    "label_dropout": 0.1,
    "dtype": "fp32",
    "seed": 0,
}
PAPER_WARMUP = 5000
TRAIN_DTYPES = ("fp32", "bf16")  # bf16: torch.autocast (fp32 weights and optimiser state)
WEIGHT_SETS = (
    "ema",
    "model",
)  # a checkpoint's two sets of weights (--init-weights, --ckpt-weights)

# Settings that define the optimisation trajectory: a resumed run must use the checkpoint's.
TRAJECTORY_KEYS = (
    "model",
    "data",
    "image_size",
    "batch_size",
    "lr",
    "weight_decay",
    "betas",
    "adam_eps",
    "warmup",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
    "label_dropout",
    "dtype",
    "seed",
    "schedule",
    "loss",
    "vae",
    "latent_scale",
    "init_from",
)


@dataclass
class TrainConfig:
    """One training run. ``None`` means "the default" (or, with ``resume``, the checkpoint's)."""

    model: str
    data: str = "photos"
    image_size: int = 32
    steps: int = 1000
    batch_size: int = 16  # global, over all ranks
    out: str = "runs/train"
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    adam_eps: float | None = None
    warmup: int | None = None
    grad_clip: float | None = None  # 0 disables clipping
    ema_decay: float | None = None
    ema_warmup: bool | None = None  # timm's EMA decay warm-up (1 - (1 + step)^-2/3)
    label_dropout: float | None = None
    dtype: str | None = None  # autocast precision, one of TRAIN_DTYPES
    seed: int | None = None
    schedule: str | None = None  # None: the model family's (DiT linear, DiM/U-ViT scaled-linear)
    loss: str | None = None  # None: hybrid for learn_sigma models, else mse
    vae: str | None = None  # local SD VAE weights: train on latents encoded on the fly
    latent_scale: float | None = None
    init_from: str | None = None  # weak-to-strong: weights from a lower-resolution checkpoint
    init_weights: str = "ema"  # which of WEIGHT_SETS --init-from takes
    resume: bool = False
    device: str = DEFAULT_DEVICE
    scan_backend: str = "auto"
    attn_backend: str = "auto"
    conv_backend: str = "auto"
    compile: str = "eager"  # or "inductor": the model through torch.compile (dimbench.compile)
    num_workers: int = 0
    log_every: int = 10
    ckpt_every: int | None = None  # None: every 10% of the run's steps
    ckpt_minutes: float = 10.0  # and at least this often, in minutes of training
    progress: bool = True
    extra: dict = field(default_factory=dict)  # model constructor overrides

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas) if self.betas is not None else None
        return d

    def with_defaults(self) -> TrainConfig:
        """A copy with every ``None`` set to its default (schedule and loss: per model)."""
        defaults = {**PAPER_DEFAULTS, "latent_scale": SD_LATENT_SCALE}
        values = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.warmup is None:
            values["warmup"] = min(PAPER_WARMUP, self.steps // 10)
        cfg = dataclasses.replace(self, **values)
        cfg.betas = tuple(cfg.betas)
        return cfg

    def merged_with_checkpoint(self, saved: dict) -> TrainConfig:
        """Fill unset trajectory settings from a checkpoint's config; refuse contradicting ones."""
        saved = saved_config(saved)
        values, clashes = {}, []
        for key in TRAJECTORY_KEYS:
            mine, theirs = getattr(self, key), saved.get(key)
            if key == "betas" and theirs is not None:
                theirs = tuple(theirs)
            if mine is None:
                values[key] = theirs
            elif theirs is not None and _differs(mine, theirs):
                clashes.append(f"{key}={mine!r} (checkpoint: {theirs!r})")
        if clashes:
            raise UsageError(
                "--resume with settings that differ from the checkpoint's: " + ", ".join(clashes)
            )
        return dataclasses.replace(self, **values).with_defaults()

    def checkpoint_interval(self) -> int:
        """Steps between checkpoints: ``ckpt_every``, else 10% of the run."""
        return self.ckpt_every or max(1, math.ceil(self.steps / 10))

    def validate(self) -> None:
        """Every value that is set, against its range (before anything is loaded or built)."""
        check_ranges(
            positive={
                "--steps": self.steps,
                "--batch-size": self.batch_size,
                "--image-size": self.image_size,
                "--log-every": self.log_every,
                "--ckpt-every": self.ckpt_every,
                "--ckpt-minutes": self.ckpt_minutes,
            },
            non_negative={"--num-workers": self.num_workers},
        )
        check_recipe(self)
        if self.init_weights not in WEIGHT_SETS:
            raise UsageError(f"--init-weights must be 'ema' or 'model', got {self.init_weights!r}")
        if self.resume and self.init_from:
            raise UsageError("--resume and --init-from exclude each other")
        check_compiler(self.compile)


def saved_config(saved: dict) -> dict:
    """A checkpoint's config in today's terms: runs written before ``dtype`` stored ``bf16``
    (a bool)."""
    if "dtype" in saved or "bf16" not in saved:
        return saved
    old = {k: v for k, v in saved.items() if k != "bf16"}
    old["dtype"] = None if saved["bf16"] is None else ("bf16" if saved["bf16"] else "fp32")
    return old


def check_ranges(
    positive: dict | None = None, non_negative: dict | None = None, unit: dict | None = None
) -> None:
    """UsageError for the first value (flag -> value; None: not set) outside its range:
    positive, >= 0, or in [0, 1)."""
    for flag, value in (positive or {}).items():
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    for flag, value in (non_negative or {}).items():
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    for flag, value in (unit or {}).items():
        if value is not None and not 0 <= value < 1:
            raise UsageError(f"{flag} must be in [0, 1), got {value}")


def check_recipe(cfg) -> None:
    """The optimisation recipe's ranges and precision, for a training run or a comparison's
    recipe (a TrainConfig whose unset fields are None)."""
    if cfg.dtype is not None and cfg.dtype not in TRAIN_DTYPES:
        raise UsageError(f"--dtype {cfg.dtype!r}: training takes {' or '.join(TRAIN_DTYPES)}")
    betas = cfg.betas if cfg.betas is not None else (None, None)
    check_ranges(
        positive={"--lr": cfg.lr, "--adam-eps": cfg.adam_eps},
        non_negative={
            "--weight-decay": cfg.weight_decay,
            "--warmup": cfg.warmup,
            "--grad-clip": cfg.grad_clip,
        },
        unit={
            "--ema-decay": cfg.ema_decay,
            "--label-dropout": cfg.label_dropout,
            "--beta1": betas[0],
            "--beta2": betas[1],
        },
    )


def _differs(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) > 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, (tuple, list)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    return a != b
