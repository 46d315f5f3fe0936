"""Official DiM checkpoints: the key scheme, the converter, the pad layouts, loading and errors.

The official state dicts here are built from the key scheme of tyshiwo1/DiM-DiffusionMamba's
``Mamba2DModel`` (``official_shapes``, written from mamba_2d.py, attention.py,
adapter_attn4mamba.py and normalization.py), with random weights: no official code runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dimbench.errors import UsageError
from dimbench.models.dim import convert_official_state_dict
from dimbench.models.dim_layout import pad_vector_index
from dimbench.models.dim_official import (
    as_dimbench_checkpoint,
    detect_official_config,
    is_official_state_dict,
    load_official_weights,
    to_official_state_dict,
)
from dimbench.registry import create_model, list_models
from dimbench.train.checkpoint import CheckpointError, load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_shapes(
    width: int = 64,
    depth: int = 7,
    grid: tuple[int, int] = (4, 4),
    in_channels: int = 4,
    classes: int = 1000,
    patch: int = 2,
    d_state: int = 16,
    d_conv: int = 3,
    expand: int = 2,
) -> dict[str, tuple[int, ...]]:
    """Every key of an official ``Mamba2DModel.state_dict()`` and its shape (released configs:
    is_extra_tokens, rms, ada_norm_single, use_a4m_adapter, use_pad_token, no_ff, uconnect,
    encoder_start_blk_id=1)."""
    d, e, r = width, expand * width, math.ceil(width / 16)
    shapes = {
        "label_emb.weight": (classes + 1, d),
        "additional_embed": (1, 2 + grid[0] * grid[1], d),
        "pos_embed.proj.weight": (d, in_channels, patch, patch),
        "pos_embed.proj.bias": (d,),
        "adaln_single.emb.timestep_embedder.linear_1.weight": (d, 256),
        "adaln_single.emb.timestep_embedder.linear_1.bias": (d,),
        "adaln_single.emb.timestep_embedder.linear_2.weight": (d, d),
        "adaln_single.emb.timestep_embedder.linear_2.bias": (d,),
        "adaln_single.emb.class_embedder.embedding_table.weight": (classes + 1, d),
        "adaln_single.linear.weight": (3 * d, d),
        "adaln_single.linear.bias": (3 * d,),
        "a4m_adapter.first_smoother.weight": (d, 1, 3, 3),
        "a4m_adapter.first_smoother.bias": (d,),
        "a4m_adapter.last_smoother.weight": (d, 1, 3, 3),
        "a4m_adapter.last_smoother.bias": (d,),
        "a4m_adapter.pad_token_dec_split": (1, d_conv, d),
        "a4m_adapter.pad_token": (1, d, d_conv),
        "norm_out.norm.weight": (d,),
        "proj_out_2.weight": (patch * patch * in_channels, d),
        "proj_out_2.bias": (patch * patch * in_channels,),
        "proj_out_1.weight": (2 * d, d),
        "proj_out_1.bias": (2 * d,),
    }
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        shapes |= {
            b + "norm1.norm.weight": (d,),
            b + "attn1.in_proj.weight": (2 * e, d),
            b + "attn1.conv1d.weight": (e, 1, d_conv),
            b + "attn1.conv1d.bias": (e,),
            b + "attn1.x_proj.weight": (r + 2 * d_state, e),
            b + "attn1.dt_proj.weight": (e, r),
            b + "attn1.dt_proj.bias": (e,),
            b + "attn1.A_log": (e, d_state),
            b + "attn1.D": (e,),
            b + "attn1.out_proj.weight": (d, e),
            b + "scale_shift_table": (3, d),
        }
        if i >= depth - (depth - 1) // 2:  # is_skip_list: the decoder half takes a long skip
            if d <= 512:
                shapes |= {b + "skip_linear.weight": (d, 2 * d), b + "skip_linear.bias": (d,)}
            else:
                for j in (0, 1):
                    shapes |= {
                        b + f"skip_linear.{j}.weight": (d, d),
                        b + f"skip_linear.{j}.bias": (d,),
                    }
    return shapes


def official_state_dict(seed: int = 0, device: str | None = None, **kw) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in official_shapes(**kw).items()}
    sd = {k: 0.1 * torch.randn(s, generator=g) for k, s in official_shapes(**kw).items()}
    for k in sd:
        if k.endswith("A_log"):
            sd[k] = torch.log(torch.arange(1, sd[k].shape[1] + 1.0)).repeat(sd[k].shape[0], 1)
        elif k.endswith("norm.weight"):
            sd[k] = 1 + sd[k]
    return sd


def build(sd: dict, **create) -> torch.nn.Module:
    cfg = detect_official_config(sd)
    kw = {"image_size": cfg.image_size, "downsample": cfg.downsample, **cfg.model_overrides()}
    model = create_model(cfg.model_name(), scan_backend="ref", **{**kw, **create})
    model.load_state_dict(convert_official_state_dict(sd), strict=True)
    return model.eval()


def inputs(batch: int, h: int, w: int, seed: int = 0, channels: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, h, w, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 1001, (batch,), generator=g)
    return x, t, y


# ----------------------------------------------------------------------------- the key scheme


@pytest.mark.parametrize("width,depth", [(64, 7), (520, 3)])  # 520: skips as two Linear(D, D)
def test_every_official_key_lands_in_a_strict_load(width, depth):
    sd = official_state_dict(width=width, depth=depth, grid=(4, 6))
    model = build(sd)
    ours = model.state_dict()
    assert len(ours) == len(sd) + 1  # additional_embed splits into two
    conv = convert_official_state_dict(sd)
    for key, value in conv.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    # the same tensors under the new names
    assert torch.equal(ours["x_embedder.weight"], sd["pos_embed.proj.weight"])
    assert torch.equal(ours["blocks.2.mixer.A_log"], sd["transformer_blocks.2.attn1.A_log"])
    assert torch.equal(
        ours["adaln_single.y_embedder.weight"],
        sd["adaln_single.emb.class_embedder.embedding_table.weight"],
    )
    last = f"transformer_blocks.{depth - 1}."
    if width <= 512:
        assert torch.equal(
            ours[f"blocks.{depth - 1}.skip_fusion.linear.weight"], sd[last + "skip_linear.weight"]
        )
    else:
        assert torch.equal(
            ours[f"blocks.{depth - 1}.skip_fusion.hidden_linear.weight"],
            sd[last + "skip_linear.0.weight"],
        )


def test_skip_fusion_computes_the_official_formula():
    for width, depth in [(64, 3), (520, 3)]:
        sd = official_state_dict(width=width, depth=depth, grid=(2, 2))
        fusion = build(sd).blocks[2].skip_fusion
        h, s = torch.randn(2, 5, width), torch.randn(2, 5, width)
        k = "transformer_blocks.2.skip_linear"
        if width <= 512:  # attention.py: skip_linear(cat([hidden_states, pre_skip]))
            want = F.linear(torch.cat([h, s], -1), sd[f"{k}.weight"], sd[f"{k}.bias"])
        else:  # skip_linear[0](hidden_states) + skip_linear[1](pre_skip)
            want = F.linear(h, sd[f"{k}.0.weight"], sd[f"{k}.0.bias"]) + F.linear(
                s, sd[f"{k}.1.weight"], sd[f"{k}.1.bias"]
            )
        with torch.no_grad():
            torch.testing.assert_close(fusion(h, s), want)


@pytest.mark.parametrize("width,name", [(1024, "DiM-L/2"), (1536, "DiM-H/2")])
def test_key_counts_of_the_released_sizes(width, name):
    sd = official_state_dict(device="meta", width=width, depth=49, grid=(16, 16))
    ours = create_model(name, 256, device="meta").state_dict()
    conv = convert_official_state_dict(sd)
    assert (len(sd), len(ours), len(conv)) == (657, 658, 658)
    assert set(sd) & set(ours) == {"adaln_single.linear.weight", "adaln_single.linear.bias"}
    assert set(conv) == set(ours)
    assert all(conv[k].shape == ours[k].shape for k in ours)


def test_round_trip_through_the_official_scheme_keeps_the_function():
    torch.manual_seed(0)
    src = create_model("DiM-T/2", 64, scan_backend="ref").eval()
    with torch.no_grad():
        for p in (src.pos_embed, src.pos_embed_cond, src.adaln_single.linear.weight):
            p.normal_()
    official = to_official_state_dict(src.state_dict())
    assert is_official_state_dict(official) and "additional_embed" in official
    back = convert_official_state_dict(official)
    assert all(torch.equal(back[k], v) for k, v in src.state_dict().items())
    again = to_official_state_dict(back)
    assert all(torch.equal(again[k], v) for k, v in official.items())
    dst = create_model("DiM-T/2", 64, scan_backend="ref").eval()
    dst.load_state_dict(back)
    x, t, y = inputs(2, 8, 8)
    with torch.no_grad():
        assert torch.equal(dst(x, t, y), src(x, t, y))


# ----------------------------------------------------------------------------- layout semantics


def test_position_embedding_and_split_tokens_sit_where_the_official_ones_do():
    sd = official_state_dict(grid=(4, 6))
    model = build(sd)
    ae = sd["additional_embed"][0]  # [time, class, patches row-major] (mamba_2d.py forward)
    torch.testing.assert_close(model.pos_embed_cond[0], ae[:2])
    for i in range(4):
        for j in range(6):
            torch.testing.assert_close(model.pos_embed[0, i, j], ae[2 + i * 6 + j])
    x, t, y = inputs(2, 8, 12)
    with torch.no_grad():
        seq, _, _ = model.embed(x, t, y)
    # concat_template: [extra tokens, split tokens (pad_token_dec_split), padded grid]
    split = sd["a4m_adapter.pad_token_dec_split"][0]
    torch.testing.assert_close(seq[:, 2:5], split.expand(2, -1, -1))


def test_pad_vector_index_by_hand():
    # a 2x4 patch grid padded to 5x7 with 3 pad vectors
    lateral = [
        [-1, -1, -1, -1, 0, 1, 2],
        [-1, -1, -1, -1, 0, 1, 2],
        [0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [2, 2, 2, 2, 2, 2, 2],
    ]
    # rho_pad: the pad slots in row-major order take vectors 0, 1, 2, 0, ... (slot numbers
    # 0-2, 3-5 in the patch rows, then 6-12, 13-19, 20-26 in the pad rows)
    cyclic = [
        [-1, -1, -1, -1, 0, 1, 2],
        [-1, -1, -1, -1, 0, 1, 2],
        [0, 1, 2, 0, 1, 2, 0],
        [1, 2, 0, 1, 2, 0, 1],
        [2, 0, 1, 2, 0, 1, 2],
    ]
    assert pad_vector_index(2, 4, 3, "lateral").tolist() == lateral
    assert pad_vector_index(2, 4, 3, "cyclic").tolist() == cyclic
    with pytest.raises(ValueError, match="pad_layout"):
        pad_vector_index(2, 4, 3, "spiral")


@pytest.mark.parametrize("layout", ["lateral", "cyclic"])
def test_pad_tokens_land_where_the_official_layouts_put_them(layout):
    sd = official_state_dict(grid=(4, 4))
    model = build(sd, pad_layout=layout)
    pads = sd["a4m_adapter.pad_token"][0]  # (D, 3): column k is pad vector k
    x, t, y = inputs(2, 4, 8)  # a 2x4 patch grid (run at another grid than built)
    with torch.no_grad():
        seq, _, layout_ = model.embed(x, t, y)
    grid = seq[:, 5:].reshape(2, 5, 7, -1)
    index = pad_vector_index(2, 4, 3, layout)
    for i in range(5):
        for j in range(7):
            if index[i, j] >= 0:
                torch.testing.assert_close(grid[:, i, j], pads[:, index[i, j]].expand(2, -1))
    assert torch.equal(index < 0, ~layout_.pad_mask())


def test_the_two_layouts_differ_only_below_the_grid():
    sd = official_state_dict(grid=(4, 4))
    lateral, cyclic = build(sd), build(sd, pad_layout="cyclic")
    x, t, y = inputs(2, 8, 8)
    with torch.no_grad():
        a, _, _ = lateral.embed(x, t, y)
        b, _, _ = cyclic.embed(x, t, y)
        diff = (a - b).abs().sum(-1)[:, 5:].reshape(2, 7, 7)
        differ = pad_vector_index(4, 4, 3, "lateral") != pad_vector_index(4, 4, 3, "cyclic")
        assert torch.equal(diff > 0, differ.expand(2, -1, -1))
        assert not differ[:4].any() and differ[4:].any()
        assert not torch.allclose(lateral(x, t, y), cyclic(x, t, y))


def test_timestep_shift_counts_time_from_one():
    sd = official_state_dict()
    official = build(sd)  # timestep_shift=1, as the official trainer's n in 1..1000
    plain = build(sd, timestep_shift=0)
    x, t, y = inputs(2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(official(x, t, y), plain(x, t + 1, y))
        assert not torch.allclose(official(x, t, y), plain(x, t, y))


def test_resized_grid_is_bilinear_as_the_official_loader():
    sd = official_state_dict(grid=(4, 4))
    model = build(sd, image_size=(96, 128))  # a 6x8 patch grid
    # utils.load_pretrained_model -> pos_embed_inteplot: bilinear, align_corners=False, grid only
    grid = sd["additional_embed"][:, 2:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.pos_embed, want.permute(0, 2, 3, 1))
    torch.testing.assert_close(model.pos_embed_cond, sd["additional_embed"][:, :2])
    # built at 64 px and run at 96x128 px resizes the same way at run time
    small = build(sd)
    x, t, y = inputs(1, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), small(x, t, y))


# ----------------------------------------------------------------------------- configs, presets


def test_released_configs_are_registered_presets():
    names = set(list_models())
    assert {"DiM-L/2-imagenet256", "DiM-H/2-imagenet256", "DiM-H/2-imagenet512ft"} <= names
    ft = create_model("DiM-H/2-imagenet512ft", 512, device="meta")
    assert (ft.pad_layout, ft.timestep_shift, ft.hidden_size, ft.depth) == ("cyclic", 1, 1536, 49)
    base = create_model("DiM-T/2", 64, device="meta", pad_layout="cyclic")
    assert base.pad_layout == "cyclic" and base.timestep_shift == 0
    assert create_model("DiM-T/2", 64, device="meta").pad_layout == "lateral"  # the default
    assert create_model("DiM-L/2-imagenet256", 256, device="meta").pad_layout == "lateral"
    with pytest.raises(ValueError, match="pad_layout"):
        create_model("DiM-T/2", 64, device="meta", pad_layout="spiral")


@pytest.mark.parametrize(
    "width,grid,name,text",
    [
        (1024, (16, 16), "DiM-L/2-imagenet256", "official DiM-L/2 256 px checkpoint"),
        (1536, (16, 16), "DiM-H/2-imagenet256", "official DiM-H/2 256 px checkpoint"),
        (1536, (32, 32), "DiM-H/2-imagenet512ft", "official DiM-H/2 512 px checkpoint"),
    ],
)
def test_the_released_checkpoints_are_recognised(width, grid, name, text):
    sd = official_state_dict(device="meta", width=width, depth=49, grid=grid)
    cfg = detect_official_config(sd)
    assert cfg.model_name() == name and cfg.describe().startswith(text)
    layout = "cyclic" if grid == (32, 32) else "lateral"
    assert cfg.model_overrides() == {"pad_layout": layout, "timestep_shift": 1}


def test_other_depths_and_widths_build_from_overrides():
    cfg = detect_official_config(official_state_dict(device="meta", width=96, depth=5))
    assert cfg.model_name() == "DiM-S/2"
    assert cfg.model_overrides() == {
        "hidden_size": 96,
        "depth": 5,
        "pad_layout": "lateral",
        "timestep_shift": 1,
    }
    assert cfg.describe() == "official DiM 64 px checkpoint (depth 5, width 96, patch 2)"


# ----------------------------------------------------------------------------- files


def test_module_prefix_and_the_ema_file(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "nnet_ema.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # saved from a DDP model
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    assert meta["official"] == "official DiM-T/2 64 px checkpoint (depth 7, width 64)"
    assert (meta["model"], meta["image_size"], meta["downsample"]) == ("DiM-T/2", [64, 64], 8)
    assert (meta["schedule"], meta["latent_scale"], meta["in_channels"]) == (
        "scaled_linear",
        0.18215,
        4,
    )
    assert meta["model_overrides"] == {"pad_layout": "lateral", "timestep_shift": 1}
    want = convert_official_state_dict(sd)
    assert all(torch.equal(ckpt["ema"][k], v) for k, v in want.items())
    assert ckpt["model"] is ckpt["ema"]
    name, kwargs, weights = load_official_weights(path)
    assert (name, kwargs["image_size"], kwargs["downsample"]) == ("DiM-T/2", 64, 8)
    create_model(name, **kwargs).load_state_dict(weights)  # strict


def test_sample_from_an_official_file(tmp_path):
    from dimbench.train.generate import generate

    torch.save(official_state_dict(grid=(2, 2)), tmp_path / "nnet_ema.pth")
    summary = generate(
        tmp_path / "nnet_ema.pth",
        tmp_path / "out",
        num=2,
        steps=2,
        batch_size=2,
        scan_backend="ref",
        progress=False,
        device="cpu",
    )
    assert summary["model"] == "DiM-T/2" and summary["image_size"] == [32, 32]
    with np.load(tmp_path / "out" / "samples.npz") as f:
        lat = f["latents"]
    assert lat.shape == (2, 4, 4, 4) and np.isfinite(lat).all()


def test_train_init_from_an_official_file(tmp_path):
    from dimbench.train.config import TrainConfig
    from dimbench.train.trainer import Trainer

    sd = official_state_dict(grid=(2, 2))  # a 32-px checkpoint ...
    torch.save(sd, tmp_path / "nnet_ema.pth")
    np.savez(tmp_path / "lat.npz", latents=np.random.randn(4, 4, 8, 8), labels=np.arange(4))

    def cfg(name, **kw):
        base = dict(
            model="DiM-T/2",
            data=str(tmp_path / "lat.npz"),
            image_size=64,  # ... initialises a 64-px run
            steps=1,
            batch_size=2,
            out=str(tmp_path / name),
            init_from=str(tmp_path / "nnet_ema.pth"),
            progress=False,
        )
        return TrainConfig(**{**base, **kw})

    trainer = Trainer(cfg("ft"))
    ours = trainer.model.state_dict()
    for key, value in convert_official_state_dict(sd).items():
        if key != "pos_embed":
            assert torch.equal(ours[key], value), key
    assert ours["pos_embed"].shape == (1, 4, 4, 64)
    with pytest.raises(UsageError, match=r"official DiM-T/2 32 px checkpoint .*width 32"):
        Trainer(cfg("narrow", extra={"hidden_size": 32}))
    with pytest.raises(UsageError, match="DiT-T/2 is not a DiM"):
        Trainer(cfg("dit", model="DiT-T/2"))


# ----------------------------------------------------------------------------- errors


def test_a_checkpoint_of_another_config_names_what_it_is(tmp_path):
    from dimbench.train.checkpoint import check_official_fits

    sd = official_state_dict(device="meta", width=1024, depth=49, grid=(16, 16))
    meta = as_dimbench_checkpoint(sd)["meta"]
    model = create_model("DiM-H/2", 256, device="meta")
    with pytest.raises(UsageError) as err:
        check_official_fits(meta, model, "nnet_ema.pth")
    msg = str(err.value)
    assert msg == (
        "nnet_ema.pth: this is an official DiM-L/2 256 px checkpoint (depth 49, width 1024); "
        "DiM-H/2 has width 1536"
    )


def test_files_that_are_not_official_dim_checkpoints(tmp_path):
    other = tmp_path / "dit.pt"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="is not a dimbench checkpoint"):
        load_checkpoint(other)
    with pytest.raises(UsageError, match="not an official DiM checkpoint"):
        load_official_weights(other)
    good = tmp_path / "nnet_ema.pth"
    torch.save(official_state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(truncated)
    with pytest.raises(UsageError, match="is truncated"):
        load_official_weights(truncated)
    with pytest.raises(UsageError, match="no checkpoint"):
        load_official_weights(tmp_path / "missing.pth")


def test_official_dicts_dimbench_cannot_hold_are_one_line_errors():
    extra = {**official_state_dict(), "transformer_blocks.0.gamma": torch.ones(64)}  # is_difffit
    with pytest.raises(UsageError, match=r"no place for: transformer_blocks\.0\.gamma"):
        convert_official_state_dict(extra)
    no_pads = official_state_dict()
    del no_pads["a4m_adapter.pad_token"]
    with pytest.raises(UsageError, match="no 'a4m_adapter.pad_token'"):
        convert_official_state_dict(no_pads)
    with pytest.raises(UsageError, match="not an H x W grid"):
        detect_official_config(official_state_dict(device="meta", grid=(1, 7)))


def test_the_cifar_config_converts_but_is_not_sampled():
    sd = official_state_dict(in_channels=3, classes=10, grid=(16, 16))
    model = build(sd)  # pixel space, 10 classes: the weights load strictly
    assert (model.in_channels, model.num_classes) == (3, 10)
    with pytest.raises(UsageError, match="pixel-space checkpoint.*is_align_exchange_q_kv"):
        as_dimbench_checkpoint(sd, "cifar.pth")


def test_run_with_official_weights(tmp_path, capsys):
    """`dimbench run ... --weights nnet_ema.pth`: the released weights in the measured model,
    and a model they do not fit is refused before anything runs."""
    from dimbench.bench import get_suite
    from dimbench.cli import main
    from dimbench.results import ResultStore

    torch.save(official_state_dict(grid=(2, 2)), tmp_path / "nnet_ema.pth")
    args = ["run", "memory", "--models", "DiM-T/2", "--res", "32", "64"]
    args += ["--weights", str(tmp_path / "nnet_ema.pth"), "--out", str(tmp_path / "res")]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    rows = ResultStore(tmp_path / "res", get_suite("memory").schema).rows()
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["weights"] for r in rows} == {str((tmp_path / "nnet_ema.pth").resolve())}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*args[:3], "DiT-T/2", *args[4:]])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "official DiM-T/2" in err and "not a DiM" in err and "\n" not in err
