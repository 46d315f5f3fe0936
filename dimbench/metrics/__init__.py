"""Sample-quality metrics: FID and KID on Inception-v3 features (offline weights), the
weight-free multi-scale sliced Wasserstein distance, and image-set loading."""

from __future__ import annotations

import importlib

# name -> submodule; imported on first use so `import dimbench.metrics` stays cheap
_EXPORTS = {
    "compute_fid": "dimbench.metrics.fid",
    "compute_kid": "dimbench.metrics.fid",
    "evaluate": "dimbench.metrics.fid",
    "extract_features": "dimbench.metrics.fid",
    "frechet_distance": "dimbench.metrics.fid",
    "reference_stats": "dimbench.metrics.fid",
    "default_cache_dir": "dimbench.metrics.fid",
    "FeatureStats": "dimbench.metrics.fid",
    "load_extractor": "dimbench.metrics.inception",
    "sliced_wasserstein": "dimbench.metrics.swd",
    "load_images": "dimbench.metrics.images",
    "open_images": "dimbench.metrics.images",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dimbench.metrics' has no attribute {name!r}")
