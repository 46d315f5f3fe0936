"""The pieces the models share (models/layers.py): one timestep sinusoid for DiT, U-ViT and DiM."""

from __future__ import annotations

import math

import pytest
import torch

from dimbench.models import dim, dit, layers, uvit


def test_every_model_uses_the_one_timestep_embedding() -> None:
    for module in (dim, dit, uvit):
        assert module.timestep_embedding is layers.timestep_embedding


@pytest.mark.parametrize("dim_", [1, 2, 7, 256, 257])
def test_timestep_embedding_is_cosines_then_sines(dim_: int) -> None:
    t = torch.tensor([0.0, 1.0, 499.5, 999.0])
    emb = layers.timestep_embedding(t, dim_)
    half = dim_ // 2
    assert emb.shape == (4, dim_) and emb.dtype == torch.float32
    for j in range(half):
        freq = math.exp(-math.log(10000.0) * j / half)
        for i, ti in enumerate(t.tolist()):
            assert emb[i, j].item() == pytest.approx(math.cos(ti * freq), abs=1e-4)
            assert emb[i, half + j].item() == pytest.approx(math.sin(ti * freq), abs=1e-4)
    if dim_ % 2:
        assert torch.equal(emb[:, -1], torch.zeros(4))


def test_timestep_embedding_of_integer_timesteps_is_that_of_floats() -> None:
    t = torch.arange(0, 1000, 37)
    assert torch.equal(layers.timestep_embedding(t, 64), layers.timestep_embedding(t.float(), 64))
