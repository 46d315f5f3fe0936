"""DiT and U-ViT baselines: published sizes, official checkpoint layout, numerics, resolutions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dimbench.registry import create_model, list_models

TINY = ("DiT-T/2", "U-ViT-T/2")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    """Overwrite every parameter (zero-inits included) so a test exercises every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def first_attention(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if hasattr(m, "attn_backend"))


def set_attn_backend(model: torch.nn.Module, backend: str) -> None:
    for m in model.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = backend


# ---------------------------------------------------------------- published parameter counts


@pytest.mark.parametrize(
    "name, published_m",
    [("DiT-S/2", 33.0), ("DiT-XL/2", 675.1), ("U-ViT-L/2", 286.8), ("U-ViT-H/2", 500.8)],
)
def test_parameter_counts_match_published(name: str, published_m: float) -> None:
    model = create_model(name, 256, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert n_params(model) / 1e6 == pytest.approx(published_m, rel=0.005)


def test_registry_names() -> None:
    names = set(list_models())
    for size in ("S", "B", "L", "XL"):
        assert {f"DiT-{size}/{p}" for p in (2, 4, 8)} <= names
    for size in ("S", "M", "L", "H"):
        assert {f"U-ViT-{size}/{p}" for p in (2, 4)} <= names
    assert set(TINY) <= names


def test_model_attributes() -> None:
    dit = create_model("DiT-XL/2", 256, device="meta")
    assert (dit.family, dit.learn_sigma, dit.in_channels, dit.out_channels) == ("dit", True, 4, 8)
    assert (dit.patch_size, dit.num_classes, dit.seq_len()) == (2, 1000, 256)
    uvit = create_model("U-ViT-H/4", 512, device="meta")
    assert (uvit.family, uvit.learn_sigma, uvit.in_channels, uvit.out_channels) == (
        "uvit",
        False,
        4,
        4,
    )
    assert (uvit.patch_size, uvit.num_classes, uvit.seq_len()) == (4, 1000, 2 + 16 * 16)
    pixel = create_model("DiT-T/2", 32, downsample=1, in_channels=3, learn_sigma=False)
    assert pixel(
        torch.randn(1, 3, 32, 32), torch.ones(1), torch.zeros(1, dtype=torch.long)
    ).shape == (
        1,
        3,
        32,
        32,
    )


# ---------------------------------------------------------------- official checkpoint layout
# Key -> shape tables derived by hand from facebookresearch/DiT models.py and baofff/U-ViT
# libs/uvit.py (timm PatchEmbed/Mlp/Attention names), for the given config.


def official_dit_shapes(depth, d, p, c_in, grid, num_classes=1000, learn_sigma=True, freq=256):
    c_out = 2 * c_in if learn_sigma else c_in
    s = {
        "pos_embed": (1, grid[0] * grid[1], d),
        "x_embedder.proj.weight": (d, c_in, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, freq),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (num_classes + 1, d),
        "final_layer.linear.weight": (p * p * c_out, d),
        "final_layer.linear.bias": (p * p * c_out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        s |= {
            b + "attn.qkv.weight": (3 * d, d),
            b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "mlp.fc1.weight": (4 * d, d),
            b + "mlp.fc1.bias": (4 * d,),
            b + "mlp.fc2.weight": (d, 4 * d),
            b + "mlp.fc2.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d),
            b + "adaLN_modulation.1.bias": (6 * d,),
        }
    return s


def official_uvit_shapes(depth, d, p, c_in, grid, table_rows=1001, conv=True):
    s = {
        "pos_embed": (1, 2 + grid[0] * grid[1], d),
        "patch_embed.proj.weight": (d, c_in, p, p),
        "patch_embed.proj.bias": (d,),
        "label_emb.weight": (table_rows, d),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "decoder_pred.weight": (p * p * c_in, d),
        "decoder_pred.bias": (p * p * c_in,),
    }
    if conv:
        s |= {"final_layer.weight": (c_in, c_in, 3, 3), "final_layer.bias": (c_in,)}
    prefixes = [f"in_blocks.{i}." for i in range(depth // 2)] + ["mid_block."]
    prefixes += [f"out_blocks.{i}." for i in range(depth // 2)]
    for b in prefixes:
        s |= {
            b + "norm1.weight": (d,),
            b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d),  # qkv_bias=False in every official config
            b + "attn.proj.weight": (d, d),
            b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,),
            b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (4 * d, d),
            b + "mlp.fc1.bias": (4 * d,),
            b + "mlp.fc2.weight": (d, 4 * d),
            b + "mlp.fc2.bias": (d,),
        }
        if b.startswith("out_blocks"):
            s |= {b + "skip_linear.weight": (d, 2 * d), b + "skip_linear.bias": (d,)}
    return s


@pytest.mark.parametrize(
    "name, table",
    [
        ("DiT-T/2", official_dit_shapes(2, 64, 2, 4, (4, 4))),
        ("DiT-XL/2", official_dit_shapes(28, 1152, 2, 4, (16, 16))),
        ("U-ViT-T/2", official_uvit_shapes(2, 64, 2, 4, (4, 4))),
        ("U-ViT-L/2", official_uvit_shapes(20, 1024, 2, 4, (16, 16), conv=True)),
        ("U-ViT-H/2", official_uvit_shapes(28, 1152, 2, 4, (16, 16), conv=False)),
    ],
)
def test_state_dict_layout_is_official(name: str, table: dict) -> None:
    size = 64 if name.endswith("T/2") else 256
    model = create_model(name, size, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == table


@pytest.mark.parametrize("name", TINY)
def test_official_state_dict_loads_strictly(name: str) -> None:
    if name.startswith("DiT"):
        table = official_dit_shapes(2, 64, 2, 4, (4, 4))
        from dimbench.models.dit import convert_official_state_dict
    else:
        table = official_uvit_shapes(2, 64, 2, 4, (4, 4))
        from dimbench.models.uvit import convert_official_state_dict
    g = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(shape, generator=g) for k, shape in table.items()}
    model = create_model(name, 64)
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    wrapped = {"module." + k: v for k, v in sd.items()}  # a DDP-saved file
    model.load_state_dict(convert_official_state_dict(wrapped), strict=True)


# ---------------------------------------------------------------- numerics


def ref_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    b, n, d = x.shape
    q, k, v = F.linear(x, qkv_w, qkv_b).split(d, dim=-1)
    q, k, v = (z.reshape(b, n, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return F.linear((a @ v).transpose(1, 2).reshape(b, n, d), proj_w, proj_b)


def ref_sinusoid(t, dim):
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / (dim // 2))
    args = t[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=1)


def ref_unpatchify(tokens, grid, p, c):
    b = tokens.shape[0]
    x = tokens.reshape(b, grid[0], grid[1], p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, grid[0] * p, grid[1] * p)


def ref_dit_forward(sd, x, t, y, depth, heads, p, c_out):
    """DiT written out functionally from the paper/official code, for the given weights."""
    w = sd
    grid = (x.shape[2] // p, x.shape[3] // p)
    h = F.conv2d(x, w["x_embedder.proj.weight"], w["x_embedder.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + w["pos_embed"]
    temb = F.linear(ref_sinusoid(t, 256), w["t_embedder.mlp.0.weight"], w["t_embedder.mlp.0.bias"])
    temb = F.linear(F.silu(temb), w["t_embedder.mlp.2.weight"], w["t_embedder.mlp.2.bias"])
    c = F.silu(temb + w["y_embedder.embedding_table.weight"][y])
    d = h.shape[-1]

    def ln(z):
        return F.layer_norm(z, (d,), eps=1e-6)

    for i in range(depth):
        b = f"blocks.{i}."
        mod = F.linear(c, w[b + "adaLN_modulation.1.weight"], w[b + "adaLN_modulation.1.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mod.chunk(6, dim=1))
        a = ref_attention(
            ln(h) * (1 + sc1) + sh1,
            w[b + "attn.qkv.weight"],
            w[b + "attn.qkv.bias"],
            w[b + "attn.proj.weight"],
            w[b + "attn.proj.bias"],
            heads,
        )
        h = h + g1 * a
        m = F.linear(ln(h) * (1 + sc2) + sh2, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])
        m = F.linear(F.gelu(m, approximate="tanh"), w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
        h = h + g2 * m
    mod = F.linear(
        c, w["final_layer.adaLN_modulation.1.weight"], w["final_layer.adaLN_modulation.1.bias"]
    )
    shift, scale = (m[:, None] for m in mod.chunk(2, dim=1))
    out = F.linear(
        ln(h) * (1 + scale) + shift, w["final_layer.linear.weight"], w["final_layer.linear.bias"]
    )
    return ref_unpatchify(out, grid, p, c_out)


def ref_uvit_forward(sd, x, t, y, depth, heads, p, conv):
    """U-ViT written out functionally from the paper/official code, for the given weights."""
    w = sd
    grid = (x.shape[2] // p, x.shape[3] // p)
    d = w["norm.weight"].shape[0]
    h = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2)
    label, time = w["label_emb.weight"][y][:, None], ref_sinusoid(t, d)[:, None]
    h = torch.cat([label, time, h], dim=1) + w["pos_embed"]

    def block(b, h, skip=None):
        if skip is not None:
            h = F.linear(
                torch.cat([h, skip], -1), w[b + "skip_linear.weight"], w[b + "skip_linear.bias"]
            )
        z = F.layer_norm(h, (d,), w[b + "norm1.weight"], w[b + "norm1.bias"])
        h = h + ref_attention(
            z,
            w[b + "attn.qkv.weight"],
            None,
            w[b + "attn.proj.weight"],
            w[b + "attn.proj.bias"],
            heads,
        )
        z = F.layer_norm(h, (d,), w[b + "norm2.weight"], w[b + "norm2.bias"])
        z = F.gelu(F.linear(z, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"]))
        return h + F.linear(z, w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])

    skips = []
    for i in range(depth // 2):
        h = block(f"in_blocks.{i}.", h)
        skips.append(h)
    h = block("mid_block.", h)
    for i in range(depth // 2):
        h = block(f"out_blocks.{i}.", h, skips.pop())
    h = F.layer_norm(h, (d,), w["norm.weight"], w["norm.bias"])
    h = F.linear(h, w["decoder_pred.weight"], w["decoder_pred.bias"])[:, 2:]
    out = ref_unpatchify(h, grid, p, x.shape[1])
    if conv:
        out = F.conv2d(out, w["final_layer.weight"], w["final_layer.bias"], padding=1)
    return out


def test_dit_matches_functional_reference() -> None:
    model = create_model("DiT-T/2", 64, depth=3).eval()
    randomize_(model)
    sd = model.state_dict()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.0, 617.0]), torch.tensor([7, 1000])
    expected = ref_dit_forward(sd, x, t, y, depth=3, heads=4, p=2, c_out=8)
    for backend in ("math", "sdpa"):
        set_attn_backend(model, backend)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, y), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [True, False])
def test_uvit_matches_functional_reference(conv: bool) -> None:
    model = create_model("U-ViT-T/2", 64, depth=4, conv=conv).eval()
    randomize_(model, seed=2)
    sd = model.state_dict()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 999.0]), torch.tensor([1000, 4])
    expected = ref_uvit_forward(sd, x, t, y, depth=4, heads=4, p=2, conv=conv)
    for backend in ("math", "sdpa"):
        set_attn_backend(model, backend)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, y), expected, atol=1e-5, rtol=1e-5)


def test_dit_zero_init_blocks_are_identity_and_output_is_zero() -> None:
    model = create_model("DiT-T/2", 64).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([3, 1000])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), torch.zeros(2, 8, 8, 8))
        h, c = torch.randn(2, 16, 64), torch.randn(2, 64)
        assert torch.equal(model.blocks[0](h, c), h)
    assert model.pos_embed.requires_grad is False


def test_dit_sincos_position_embedding_values() -> None:
    from dimbench.models.dit import sincos_pos_embed_2d

    dim, grid = 16, (3, 5)
    pe = sincos_pos_embed_2d(dim, grid)
    q = dim // 4
    for i in range(grid[0]):
        for j in range(grid[1]):
            omega = [10000 ** (-k / q) for k in range(q)]
            row = [math.sin(j * o) for o in omega] + [math.cos(j * o) for o in omega]
            row += [math.sin(i * o) for o in omega] + [math.cos(i * o) for o in omega]
            torch.testing.assert_close(pe[i * grid[1] + j], torch.tensor(row), atol=1e-6, rtol=0)


def test_dit_label_dropout_only_in_training() -> None:
    model = create_model("DiT-T/2", 64, class_dropout_prob=1.0)
    y = torch.tensor([1, 2, 3])
    null = model.y_embedder.embedding_table.weight[1000]
    assert torch.equal(model.y_embedder(y, train=True), null.expand(3, -1))
    assert torch.equal(model.y_embedder(y, train=False), model.y_embedder.embedding_table(y))


# ---------------------------------------------------------------- resolutions, backends, grads


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("image_size", [64, (96, 128)])
def test_forward_backward_two_resolutions(name: str, image_size) -> None:
    torch.manual_seed(0)
    model = create_model(name, image_size)
    randomize_(model, std=0.1)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    x = torch.randn(2, 4, h // 8, w // 8)
    t, y = torch.tensor([5.0, 900.0]), torch.tensor([0, model.num_classes])
    outs = {}
    for backend in ("math", "sdpa"):
        set_attn_backend(model, backend)
        model.zero_grad()
        out = model(x, t, y)
        out.square().mean().backward()
        outs[backend] = (out.detach(), first_attention(model).qkv.weight.grad.clone())
    out, grad = outs["sdpa"]
    assert out.shape == (2, model.out_channels, h // 8, w // 8)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for a, b in zip(outs["math"], outs["sdpa"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_other_grid_at_run_time_matches_model_built_for_it(name: str) -> None:
    small, large = create_model(name, 64).eval(), create_model(name, 128).eval()
    randomize_(small, seed=3)
    large.load_state_dict(small.state_dict())  # pos_embed rebuilt/resampled for 16x16
    x, t, y = torch.randn(1, 4, 16, 16), torch.tensor([42.0]), torch.tensor([9])
    with torch.no_grad():
        torch.testing.assert_close(small(x, t, y), large(x, t, y))
        assert small(torch.randn(1, 4, 8, 12), t, y).shape[-2:] == (8, 12)


def test_uvit_checkpoint_from_another_grid_is_resampled() -> None:
    from timm.layers import resample_abs_pos_embed

    small, large = create_model("U-ViT-T/2", 64), create_model("U-ViT-T/2", 128)
    large.load_state_dict(small.state_dict())
    expected = resample_abs_pos_embed(small.pos_embed, [8, 8], [4, 4], num_prefix_tokens=2)
    torch.testing.assert_close(large.pos_embed.data, expected.data)
    torch.testing.assert_close(large.pos_embed[:, :2], small.pos_embed[:, :2])


def test_input_not_divisible_by_patch_is_a_clear_error() -> None:
    model = create_model("U-ViT-T/2", 64)
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        model(torch.randn(1, 4, 9, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_uvit_dirac_init_makes_the_final_conv_the_identity():
    x = torch.randn(2, 4, 8, 8)
    dirac = create_model("U-ViT-T/2", 8, device="cpu", downsample=1, conv_init="dirac")
    assert torch.equal(dirac.final_layer(x), x)  # its output is its input
    assert torch.count_nonzero(dirac.final_layer.bias) == 0
    official = create_model("U-ViT-T/2", 8, device="cpu", downsample=1)  # PyTorch's default
    assert not torch.allclose(official.final_layer(x), x, atol=1e-3)
    with pytest.raises(ValueError, match="conv_init"):
        create_model("U-ViT-T/2", 8, device="meta", downsample=1, conv_init="zeros")
