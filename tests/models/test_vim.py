"""ViM, the Vision-Mamba-style backbone written against mamba_ssm, through the compat layer."""

from __future__ import annotations

import pytest
import torch

from dimbench.measure import count_flops
from dimbench.models.vim import ViM, reverse_patches
from dimbench.registry import create_model, get_model, list_models

TINY = dict(hidden_size=32, depth=2, d_state=4, num_classes=10)


def randomize_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Overwrite every parameter (the zero-initialised head too) so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def inputs(batch: int = 2, side: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, side, side, generator=g)
    return x, torch.rand(batch, generator=g) * 1000, torch.randint(0, 10, (batch,), generator=g)


def test_registered_sizes_and_attributes() -> None:
    assert {"ViM-T/2", "ViM-S/2", "ViM-B/2"} <= set(list_models())
    spec = get_model("ViM-S/2")
    assert spec.kernels == ("scan", "conv") and spec.family_id == "vim"
    assert spec.tokens(256) == 256
    model = create_model("ViM-S/2", 256, device="meta")
    assert (model.learn_sigma, model.in_channels, model.out_channels) == (False, 4, 4)
    assert model.seq_len() == 258  # time and class tokens + 16 x 16 patches
    assert len(model.blocks) == 12  # 24 Mamba layers in forward/backward pairs
    # Vim-S's width and layer count; each direction has its own projections
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(23.8, abs=0.1)


def test_blocks_are_mamba_ssm_modules_with_mamba_names() -> None:
    from mamba_ssm.modules.mamba_simple import Mamba

    model = ViM(input_size=(8, 8), **TINY)
    assert isinstance(model.blocks[0].forward_mixer, Mamba)
    keys = set(model.state_dict())
    for name in ("in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.bias", "A_log", "D"):
        assert f"blocks.0.backward_mixer.{name}" in keys


def test_forward_backward_at_two_resolutions() -> None:
    model = ViM(input_size=(8, 8), **TINY)
    randomize_(model)
    for side in (8, 12):  # a grid it was not built for: the position embedding is resized
        x, t, y = inputs(side=side)
        out = model(x, t, y)
        assert out.shape == x.shape
        out.square().mean().backward()
        for mixer in (model.blocks[0].forward_mixer, model.blocks[0].backward_mixer):
            assert mixer.in_proj.weight.grad.abs().sum() > 0
        model.zero_grad()


def first_patch_sensitivity(model: ViM, x, t, y) -> tuple[float, float]:
    """d out[first patch] / d x at the first and at the last patch."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x, t, y)[:, :, 0, 0].sum(), x)
    return grad[:, :, 0, 0].abs().max().item(), grad[:, :, -1, -1].abs().max().item()


def test_the_backward_scan_lets_the_first_patch_see_the_last() -> None:
    model = ViM(input_size=(8, 8), **TINY)
    randomize_(model, std=0.2)
    x, t, y = inputs()
    own, last = first_patch_sensitivity(model, x, t, y)
    assert own > 0 and last > 0
    with torch.no_grad():  # forward scans only: the first patch comes before the last one
        for block in model.blocks:
            block.backward_mixer.out_proj.weight.zero_()
    own, last = first_patch_sensitivity(model, x, t, y)
    assert own > 0 and last == 0.0


def test_reverse_patches_keeps_the_condition_tokens_first() -> None:
    seq = torch.arange(6.0).view(1, 6, 1)
    assert reverse_patches(seq).flatten().tolist() == [0, 1, 5, 4, 3, 2]
    torch.testing.assert_close(reverse_patches(reverse_patches(seq)), seq)


def test_scan_backends_agree_and_checkpointing_is_exact() -> None:
    model = ViM(input_size=(8, 8), **TINY)
    randomize_(model)
    x, t, y = inputs()
    out = model(x, t, y)
    model.scan_backend = "ref"
    torch.testing.assert_close(model(x, t, y), out, rtol=1e-4, atol=1e-5)
    model.scan_backend = "auto"
    model.set_grad_checkpointing(True)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x, t, y).sum().backward()
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_flops_count_the_scan() -> None:
    r = count_flops("ViM-T/2", 64)
    assert any("selective_scan" in op for op in r["breakdown"])
    assert r["gflops"] > 0 and r["tokens"] == 18  # what the Mamba layers see: 2 + 4 x 4
