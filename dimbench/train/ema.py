"""The weights' exponential moving average (timm's ``ModelEmaV3``) and how much of it is still
the start of training.

With a constant decay d the EMA after n updates keeps d^(n-1) of the first update's weights:
0.9999^299 = 97% after a 300-step run, so sampling from it samples a barely trained model. timm's
warm-up ramps the decay as 1 - (1 + step)^(-2/3) up to d, so short runs average their recent
steps and long runs still reach d.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.utils import ModelEmaV3

EARLY_FRACTION = 0.1  # "the start of training": its first 10% of steps
EARLY_WARN = 0.5  # warn when they carry more than half of the EMA's weight


def make_ema(model: torch.nn.Module, decay: float, warmup: bool) -> ModelEmaV3:
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)


def early_share(decay: float, warmup: bool, steps: int, fraction: float = EARLY_FRACTION) -> float:
    """The share of the EMA's weight that comes from the first ``fraction`` of ``steps``
    updates (updates are numbered 1..steps, as the trainer calls ``ema.update(step=...)``)."""
    if steps < 1:
        return 1.0
    schedule = make_ema(torch.nn.Linear(1, 1), decay, warmup)
    d = np.array([schedule.get_decay(k) for k in range(1, steps + 1)], dtype=np.float64)
    # update k enters with weight (1 - d_k) and is then multiplied by every later decay
    later = np.concatenate([np.cumprod(d[::-1])[::-1][1:], [1.0]])
    weights = (1.0 - d) * later
    early = max(1, int(steps * fraction))
    return float(weights[:early].sum() / weights.sum())
