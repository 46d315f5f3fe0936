"""count_flops: published GMACs, conventions, train mode, errors."""

from __future__ import annotations

import pytest

from dimbench.errors import UsageError
from dimbench.measure import count_flops
from dimbench.ops.attention import attention_flops
from dimbench.registry import UnknownModelError, list_models


# Published tables (DiT paper Table 4 / README, U-ViT paper): GFLOPs with 1 multiply-add = 1.
@pytest.mark.parametrize(
    "name, image_size, published_gmacs",
    [
        ("DiT-S/2", 256, 6.06),
        ("DiT-B/2", 256, 23.01),
        ("DiT-XL/2", 256, 118.64),
        ("DiT-XL/2", 512, 524.6),
        ("DiT-XL/4", 256, 29.05),
        ("DiT-XL/8", 256, 7.39),
        ("U-ViT-L/2", 256, 76.5),
        ("U-ViT-H/2", 256, 133.3),
    ],
)
def test_gmacs_match_published(name: str, image_size: int, published_gmacs: float) -> None:
    r = count_flops(name, image_size)
    assert r["gmacs"] == pytest.approx(published_gmacs, rel=0.01)


def test_result_fields_and_conventions() -> None:
    r = count_flops("DiT-XL/2", 256, batch_size=2)
    assert r["gflops"] == pytest.approx(2 * r["gmacs"])
    assert r["flops"] == pytest.approx(r["gflops"] * 1e9)
    assert isinstance(r["params"], int) and r["params_m"] == pytest.approx(675.1, rel=0.005)
    assert r["tokens"] == 256 and r["batch_size"] == 2 and r["mode"] == "forward"
    assert sum(r["breakdown"].values()) == pytest.approx(r["gflops"])
    # batch 2 is twice batch 1; torch's counter gives 237.3 GFLOPs for DiT-XL/2 at 256
    assert r["gflops"] / 2 == pytest.approx(237.3, rel=0.01)


def test_attention_counted_by_formula() -> None:
    # DiT-T/2 at 128 px: 8x8 = 64 tokens, 2 blocks, 4 heads of 16; bmm is attention only.
    r = count_flops("DiT-T/2", 128)
    per_block = attention_flops((1, 4, 64, 16), (1, 4, 64, 16), (1, 4, 64, 16))
    assert r["breakdown"]["aten.bmm"] * 1e9 == pytest.approx(2 * per_block)


def test_train_mode_counts_forward_and_backward() -> None:
    fwd = count_flops("U-ViT-H/2", 256)
    train = count_flops("U-ViT-H/2", 256, mode="train")
    # backward = 2x forward for every matmul, except no input gradient for the patch conv
    assert 2.99 < train["gflops"] / fwd["gflops"] <= 3.0


def test_resolution_scaling() -> None:
    small, large = count_flops("DiT-XL/2", 256), count_flops("DiT-XL/2", (256, 512))
    assert large["tokens"] == 2 * small["tokens"]
    assert small["gmacs"] * 2 < large["gmacs"] < count_flops("DiT-XL/2", 512)["gmacs"]


def test_errors() -> None:
    with pytest.raises(UnknownModelError, match="DiT-XL/2"):
        count_flops("DiT-XXL/2", 256)
    with pytest.raises(UsageError, match="multiple of 16"):
        count_flops("DiT-XL/2", 250)
    with pytest.raises(UsageError, match="mode"):
        count_flops("DiT-XL/2", 256, mode="backward")


def test_dim_scan_is_counted() -> None:
    if "DiM-S/2" not in list_models():
        pytest.skip("DiM is not registered in this checkout")
    r = count_flops("DiM-S/2", 256)
    assert any("selective_scan" in op for op in r["breakdown"])
    assert r["gflops"] > 0 and r["params"] > 0
    assert r["tokens"] == 366  # 2 cond + 3 split + 19 x 19 padded grid (REFERENCE.md)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_conv_backward_counts_groups(groups: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dimbench.measure.flops import FLOP_FORMULAS

    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups, device="meta")
    x = torch.empty(2, 16, 8, 8, device="meta", requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        conv(x).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    forward = 2 * (2 * 8 * 8) * 16 * (16 // groups) * 9  # 2 FLOPs per multiply-add
    assert counts[torch.ops.aten.convolution] == forward
    assert counts[torch.ops.aten.convolution_backward] == 2 * forward  # input + weight grads
