"""A weight-free sanity check of generated images: do neighbouring pixels agree?

The lag-1 autocorrelation of pixel values (horizontal and vertical neighbours, each image's
channels centred on their own mean) is about 0 for noise and about 0.9 for photographs, so a
sampler that returns saturated noise (an untrained EMA, a broken schedule) shows at a glance.
"""

from __future__ import annotations

import numpy as np


def lag1_autocorrelation(images: np.ndarray) -> float:
    """Mean lag-1 autocorrelation of ``images`` (N, H, W, C) or (N, H, W), any numeric dtype.

    Per image and channel: the correlation of every pixel with its right and lower neighbour
    (the two directions pooled); a constant image counts as 0. Returns the mean over images.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1] < 2 or x.shape[2] < 2:
        raise ValueError(f"expected images (N, H, W[, C]) of at least 2x2, got {x.shape}")
    x = x - x.mean(axis=(1, 2), keepdims=True)
    num = (x[:, :, 1:] * x[:, :, :-1]).sum(axis=(1, 2)) + (x[:, 1:] * x[:, :-1]).sum(axis=(1, 2))
    var = (x**2).sum(axis=(1, 2))
    pairs = x.shape[1] * (x.shape[2] - 1) + (x.shape[1] - 1) * x.shape[2]
    denom = var * pairs / (x.shape[1] * x.shape[2])
    r = np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 0.0)
    return float(r.mean())
