"""What ``dimbench sample`` draws from a checkpoint, and how: the settings with their defaults
(the command line shows them from here) and their validation."""

from __future__ import annotations

from dataclasses import dataclass

from dimbench.devices import DEFAULT_DEVICE
from dimbench.errors import UsageError
from dimbench.train.config import WEIGHT_SETS

DPM_ORDERS = (1, 2, 3)


@dataclass(frozen=True)
class SampleConfig:
    """One sampling run. ``steps`` None: the sampler's default; ``clip_x0`` None: on for
    pixel-space models, off for latents; ``vae`` None: the one used in training, if any."""

    num: int = 16
    sampler: str = "dpm++"
    steps: int | None = None
    cfg_scale: float = 0.0
    upsample: int | None = None
    upsample_guidance: bool = True
    batch_size: int = 16
    seed: int = 0
    weights: str = "ema"  # which of the checkpoint's WEIGHT_SETS
    class_label: int | None = None
    order: int = 2  # DPM-Solver++ order, one of DPM_ORDERS
    eta: float = 0.0
    vae: str | None = None
    device: str = DEFAULT_DEVICE
    scan_backend: str = "auto"
    attn_backend: str = "auto"
    conv_backend: str = "auto"
    progress: bool = True
    clip_x0: bool | None = None

    def validate(self) -> None:
        """Every value against its range (before the checkpoint is loaded)."""
        from dimbench.diffusion.sampler_names import SAMPLERS
        from dimbench.diffusion.upsample import UPSAMPLE_FACTORS

        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler!r}: valid: {', '.join(SAMPLERS)}")
        if self.upsample is not None and self.upsample not in UPSAMPLE_FACTORS:
            raise UsageError(f"--upsample must be one of {UPSAMPLE_FACTORS}, got {self.upsample}")
        if self.num < 1 or self.batch_size < 1:
            raise UsageError("--num and --batch-size must be positive")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be positive, got {self.steps}")
        if self.order not in DPM_ORDERS:
            raise UsageError(f"--order must be 1, 2 or 3, got {self.order}")
        if self.eta < 0:
            raise UsageError(f"--eta must be >= 0 (0 = deterministic DDIM), got {self.eta}")
        if self.cfg_scale < 0:
            raise UsageError(f"--cfg-scale must be >= 0 (0 = no guidance), got {self.cfg_scale}")
        check_weight_set(self.weights)


def check_weight_set(weights: str) -> None:
    if weights not in WEIGHT_SETS:
        valid = " or ".join(repr(w) for w in WEIGHT_SETS)
        raise UsageError(f"--ckpt-weights must be {valid}, got {weights!r}")
