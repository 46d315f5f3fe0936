"""Profiling: operator categories, the fake-tensor op recorder (FLOPs, bytes, live memory), the
profiler's time split, the profile suite's rows and `dimbench profile`. Tiny models only."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dimbench.bench.spec import Config
from dimbench.measure.op_categories import CATEGORIES, classify
from dimbench.measure.op_recorder import OpRecorder, record_step
from dimbench.measure.step_breakdown import break_down_step


def cli(args: list[str]) -> int:
    """Run `dimbench ARGS` in this process; its exit code."""
    from dimbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


# ----------------------------------------------------------------------------- categories


@pytest.mark.parametrize(
    "chain, category",
    [
        # the scan custom op owns everything it runs (the old op_breakdown's rule)
        (["dimbench::selective_scan", "aten::clone", "aten::copy_"], "scan"),
        (["dimbench::selective_scan_bwd"], "scan"),
        # a linear's matmul and its bias copy are matmul; autocast's casts inside it are copies
        (["aten::linear", "aten::addmm"], "matmul"),
        (["aten::linear", "aten::addmm", "aten::copy_"], "matmul"),
        (["aten::linear", "aten::to", "aten::_to_copy", "aten::copy_"], "copy"),
        (["aten::bmm"], "matmul"),
        (
            ["aten::conv1d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution"],
            "conv",
        ),  # fmt: skip
        (["aten::convolution_backward"], "conv"),
        (["aten::rms_norm", "aten::_fused_rms_norm", "aten::pow"], "norm"),
        (["aten::layer_norm", "aten::native_layer_norm"], "norm"),
        (
            [
                "aten::scaled_dot_product_attention",
                "aten::_scaled_dot_product_attention_math",
                "aten::matmul",
                "aten::bmm",
            ],
            "attention",
        ),  # fmt: skip
        (["aten::add"], "elementwise"),
        (["aten::silu_backward"], "elementwise"),
        (["aten::mean"], "elementwise"),
        (["aten::index_select"], "copy"),
        (["aten::cat"], "copy"),
        (["aten::permute"], "copy"),
        (["aten::pad", "aten::constant_pad_nd", "aten::empty"], "copy"),
        (["Optimizer.step#AdamW.step", "aten::_foreach_add_"], "optimizer"),
        (["dimbench.block:blocks.0", "aten::mul"], "elementwise"),  # ranges are transparent
        (["aten::empty"], "other"),
        (["mylib::fused_mamba_mixer"], "scan"),  # custom ops by name
        (["mylib::flash_attn_fwd"], "attention"),
    ],
)
def test_categories(chain, category):
    assert classify(chain) == category
    assert category in CATEGORIES


# ----------------------------------------------------------------------------- op recorder


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 32)

    def forward(self, x):
        h = torch.relu(self.fc(x))  # addmm + relu
        return torch.cat([h, h.t().t()], dim=0)  # two views, one cat


def test_recorder_counts_flops_bytes_and_categories_of_a_toy_module():
    model, x = Toy(), torch.randn(8, 64)
    rec = OpRecorder()
    with rec, torch.no_grad():
        model(x)
    by_name = {}
    for op in rec.ops:
        by_name.setdefault(op.name, []).append(op)
    (addmm,) = by_name["aten::addmm"]
    assert addmm.category == "matmul" and addmm.flops == 2 * 8 * 64 * 32
    # bias read once (its broadcast is not bytes), input, weight, output
    assert addmm.bytes == 4 * (32 + 8 * 64 + 32 * 64 + 8 * 32)
    assert addmm.dims == (1, 8, 32, 64)
    assert addmm.scopes == ("aten::linear",)
    (relu,) = by_name["aten::relu"]
    assert relu.category == "elementwise" and relu.bytes == 2 * 4 * 8 * 32 and relu.flops == 0
    (cat,) = by_name["aten::cat"]
    assert cat.category == "copy" and cat.bytes == 2 * (2 * 4 * 8 * 32)
    views = [op for op in rec.ops if op.view]
    assert views and all(op.bytes == 0 for op in views)
    assert {op.name for op in views} >= {"aten::t"}
    # live memory: relu's input (the addmm output) is freed only after relu has its output
    assert rec.peak >= 4 * (8 * 32 * 2)


@pytest.mark.parametrize("name", ["DiM-T/2", "DiT-T/2", "U-ViT-T/2"])
def test_recorded_flops_equal_count_flops(name):
    from dimbench.measure import count_flops

    for dtype in ("fp32", "bf16"):
        stream = record_step(name, 64, dtype=dtype)
        assert stream.flops == count_flops(name, 64)["flops"]
        cats = stream.by_category()
        assert cats["matmul"]["flops"] > 0 and stream.bytes > 0
        assert stream.peak_bytes > stream.params_bytes
    if name.startswith("DiM"):
        assert cats["scan"]["flops"] > 0 and cats["attention"]["ops"] == 0
        assert len(stream.blocks) == 7 and set(stream.by_block()) == set(stream.blocks)
    else:
        assert cats["attention"]["flops"] > 0 and cats["scan"]["ops"] == 0
    assert stream.dtype == "bf16" and cats["copy"]["ops"] > 0  # autocast's casts


def test_recorded_train_step_matches_count_flops_and_has_an_optimizer():
    from dimbench.measure import count_flops

    stream = record_step("DiT-T/2", 32, mode="train")
    assert stream.flops == count_flops("DiT-T/2", 32, mode="train")["flops"]
    cats = stream.by_category()
    assert cats["optimizer"]["ops"] > 0 and cats["norm"]["ops"] > 0


def test_recording_leaves_no_fake_tensor_behind():
    """DiM caches its token layout per grid: a recording on fake tensors must not leave fake
    tensors in that cache for a real run of the same grid."""
    from dimbench.registry import create_model

    record_step("DiM-T/2", 48)
    model = create_model("DiM-T/2", 48).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 4, 6, 6), torch.full((1,), 10.0), torch.zeros(1).long())
    assert out.shape == (1, 4, 6, 6) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- profiler


def _workload(model="DiM-T/2", res=32, **kw):
    from dimbench.bench.workload import build_workload

    backends = {"scan_backend": "cpu", "conv_backend": "torch"} if "DiM" in model else {}
    cfg = Config(suite="profile", model=model, image_size=res, **backends, **kw)
    work = build_workload(cfg)
    work.step()
    return work


def test_profiler_splits_a_step_by_category_and_block(tmp_path):
    work = _workload()
    trace = tmp_path / "t.json"
    prof = break_down_step(work.step, work.model, "cpu", steps=1, trace_path=trace)
    assert set(prof.category_s) == set(CATEGORIES)
    assert prof.category_s["scan"] > 0 and prof.category_s["matmul"] > 0
    assert prof.category_s["attention"] == 0
    # every profiled microsecond is in one category: they add up to the step
    assert prof.total_s == pytest.approx(sum(prof.category_s.values()))
    assert 0.5 * prof.wall_s < prof.total_s <= 1.05 * prof.wall_s
    assert sorted(prof.block_s) == sorted(f"blocks.{i}" for i in range(7))
    assert sum(prof.block_s.values()) < prof.total_s
    assert prof.peak_bytes > 0 and prof.holders and prof.holders[0].bytes > 0
    assert json.loads(trace.read_text())["traceEvents"]


def test_profile_suite_rows():
    from dimbench.bench.registry import get_suite

    cfg = Config(suite="profile", model="DiT-T/2", image_size=32, attn_backend="sdpa")
    rows = get_suite("profile").measure(cfg)["rows"]
    model = {r["category"]: r for r in rows if r["scope"] == "model"}
    assert set(model) == {*CATEGORIES, "total"}
    shares = sum(model[c]["share"] for c in CATEGORIES)
    assert shares == pytest.approx(1.0, abs=1e-6)
    assert model["attention"]["time_ms"] > 0 and model["attention"]["gflops"] > 0
    assert model["matmul"]["gflops_s"] > 0 and model["total"]["mem_mb"] > 0
    blocks = [r for r in rows if r["scope"].startswith("block:")]
    assert [r["scope"] for r in blocks] == ["block:blocks.0", "block:blocks.1"]
    assert all(0 < r["share"] < 1 for r in blocks)
    memory = {r["category"]: r for r in rows if r["scope"] == "memory"}
    assert memory["held"]["mem_mb"] > 0 and memory["top1"]["op"].startswith("aten::")


def test_profile_command_end_to_end(tmp_path, capsys, fresh_cache):  # no device profile
    from dimbench.results import load_results

    out = tmp_path / "out"
    assert cli(["profile", "DiM-T/2", "--res", "32", "--trace", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DiM-T/2 32px" in text and "scan" in text
    df = load_results(out / "profile.csv")
    model = df[df["scope"] == "model"]
    assert set(model["category"]) == {*CATEGORIES, "total"}
    assert (df["scope"].str.startswith("block:")).sum() == 7
    assert model["roofline_pct"].isna().all()  # no device profile: no roofline
    assert (out / "profile.png").exists() and list((out / "traces").glob("*.json"))
    # a rerun skips the configuration (it is done), --redo replaces all its rows
    assert cli(["profile", "DiM-T/2", "--res", "32", "--out", str(out)]) == 0
    assert "already in" in capsys.readouterr().err
    rows = len(df)
    assert cli(["profile", "DiM-T/2", "--res", "32", "--out", str(out), "--redo"]) == 0
    assert len(load_results(out / "profile.csv")) == rows


def test_a_configurations_latest_rows_replace_its_earlier_ones(tmp_path):
    """An error row, then the category rows of a successful rerun: only the latter remain."""
    from dimbench.bench import get_suite, schemas
    from dimbench.results import ResultStore, load_results

    schema = get_suite("profile").schema
    make_row = schema.row
    store = ResultStore(tmp_path, schema)
    key = dict(suite="profile", model="DiT-T/2", image_size=32, batch_size=1, device="cpu",
               dtype="fp32", mode="forward")  # fmt: skip
    store.append(make_row(**key, status="error", error="boom", timestamp="2026-01-01T00:00:00Z"))
    for category in ("matmul", "total"):
        store.append(make_row(**key, status="ok", scope="model", category=category, time_ms=1.0,
                              timestamp="2026-01-01T00:01:00Z"))  # fmt: skip
    df = load_results(tmp_path, schemas())
    assert list(df["category"]) == ["matmul", "total"] and set(df["status"]) == {"ok"}
    from dimbench.results import KEY_COLUMNS

    assert store.done_keys() == {tuple(str(key.get(c, "")) for c in KEY_COLUMNS)}
