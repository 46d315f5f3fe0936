"""The training configuration: --dtype replaces bf16, and runs written before still resume."""

from __future__ import annotations

import pytest

from dimbench.errors import UsageError
from dimbench.train.config import TRAJECTORY_KEYS, TrainConfig, saved_config


def saved(**kw) -> dict:
    """A checkpoint's config as the previous version wrote it (``bf16``, no ``dtype``)."""
    old = TrainConfig(model="DiT-T/2", image_size=8, steps=4).with_defaults().to_dict()
    old.pop("dtype")
    return {**old, "bf16": False, **kw}


def test_a_run_that_stored_bf16_resumes_with_its_precision():
    assert "dtype" in TRAJECTORY_KEYS and "bf16" not in TRAJECTORY_KEYS
    assert saved_config(saved(bf16=True))["dtype"] == "bf16"
    assert saved_config(saved())["dtype"] == "fp32"
    resumed = TrainConfig(model="DiT-T/2", image_size=8, steps=8, resume=True)
    assert resumed.merged_with_checkpoint(saved(bf16=True)).dtype == "bf16"
    assert resumed.merged_with_checkpoint(saved()).dtype == "fp32"
    with pytest.raises(UsageError, match="dtype='fp32' \\(checkpoint: 'bf16'\\)"):
        TrainConfig(model="DiT-T/2", image_size=8, steps=8, dtype="fp32").merged_with_checkpoint(
            saved(bf16=True)
        )


def test_dtype_defaults_to_fp32_and_takes_bf16_only_besides():
    assert TrainConfig(model="DiT-T/2").with_defaults().dtype == "fp32"
    with pytest.raises(UsageError, match="training takes fp32 or bf16"):
        TrainConfig(model="DiT-T/2", dtype="fp16").validate()
    TrainConfig(model="DiT-T/2", dtype="bf16", conv_backend="torch").validate()
