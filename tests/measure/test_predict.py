"""The cost model: device profiles (measured and datasheet), calibration at tiny sizes, the
pricing curves, predictions and crossovers, `dimbench calibrate` / `predict`, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dimbench.measure import device_profile as dp
from dimbench.measure.cost_model import (
    CostModel,
    Curve,
    crossover_px,
    fit_matmul,
    predict_stream,
)
from dimbench.measure.op_recorder import record_step

REPO = Path(__file__).resolve().parents[2]
H100 = REPO / "results" / "device_profiles" / "h100-sxm-datasheet.json"


def datasheet(**ceilings) -> dp.DeviceProfile:
    base = {"matmul_gflops": {"fp32": 100.0, "bf16": 200.0}, "bandwidth_gbs": 20.0}
    return dp.from_dict(
        {
            "format": dp.FORMAT,
            "name": "toy",
            "source": "datasheet",
            "device": "cpu",
            "ceilings": {**base, **ceilings},
        }
    )


def cli(args: list[str]) -> int:
    """Run `dimbench ARGS` in this process; its exit code."""
    from dimbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code or 0


# ----------------------------------------------------------------------------- profiles


def test_the_shipped_h100_datasheet_profile_loads_and_is_marked():
    profile = dp.load(H100)
    assert profile.source == "datasheet" and profile.label == "h100-sxm-datasheet (datasheet)"
    assert profile.matmul_gflops("bf16") == pytest.approx(989_400)
    assert profile.matmul_gflops("fp32") == pytest.approx(66_900)
    assert profile.bandwidth_gbs == pytest.approx(3350) and profile.async_dispatch
    assert profile.references and "datasheet" in dp.describe(profile)


def test_hand_written_profile_round_trips(tmp_path):
    profile = datasheet(dispatch_us=3.0)
    path = profile.save(tmp_path / "p.json")
    again = dp.load(path)
    assert again.source == "datasheet" and again.dispatch_us == 3.0 and again.points == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": "other"}', "format must be"),
        (
            json.dumps(
                {
                    "format": dp.FORMAT,
                    "name": "x",
                    "source": "guess",
                    "device": "cpu",
                    "ceilings": {},
                }
            ),
            "source must be one of",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "format": dp.FORMAT,
                    "name": "x",
                    "source": "datasheet",
                    "device": "cpu",
                    "ceilings": {"matmul_gflops": {"fp32": -1}, "bandwidth_gbs": 1},
                }
            ),
            "positive",
        ),  # fmt: skip
        (
            json.dumps(
                {
                    "format": dp.FORMAT,
                    "name": "x",
                    "source": "datasheet",
                    "device": "cpu",
                    "ceilings": {"matmul_gflops": {"fp32": 1}},
                }
            ),
            "bandwidth_gbs",
        ),  # fmt: skip
    ],
)
def test_bad_profile_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(dp.DeviceProfileError, match=message) as info:
        dp.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(dp.DeviceProfileError, match="no such file"):
        dp.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- curves and fits


def test_curve_interpolates_in_log_log_and_extrapolates_at_a_bounded_slope():
    curve = Curve([(1e3, 1.0), (1e5, 10.0)], floor_ms=0.01)
    assert curve.ms(1e3) == pytest.approx(1.0) and curve.ms(1e5) == pytest.approx(10.0)
    assert curve.ms(1e4) == pytest.approx(math.sqrt(10.0))  # halfway in log-log
    # beyond the last point: the last slope (0.5) continues
    assert curve.ms(1e7) == pytest.approx(100.0)
    steep = Curve([(1, 1.0), (10, 100.0)])
    assert steep.ms(100) == pytest.approx(1000.0)  # slope clamped to 1: the rate stays
    assert Curve([(1e3, 1.0)], floor_ms=0.1).ms(10) == pytest.approx(0.1 + 0.9 * 0.01)


def test_matmul_fit_recovers_a_known_efficiency_model():
    rate, h = 200.0, (64.0, 32.0, 16.0)

    def ms(m, n, k):
        eff = (m / (m + h[0])) * (n / (n + h[1])) * (k / (k + h[2]))
        return 0.002 + 2 * m * n * k / (rate * eff * 1e6)

    shapes = [(m, n, k) for m in (16, 256, 4096) for n in (32, 512) for k in (8, 1024)]
    points = [{"dims": [1, *s], "ms": ms(*s)} for s in shapes]
    model = fit_matmul(points)
    assert model.rate_gflops == pytest.approx(rate, rel=0.05)
    for s in [(100, 100, 100), (2048, 64, 512)]:  # between the measured shapes
        assert model.ms(1, *s) == pytest.approx(ms(*s), rel=0.05)
    assert fit_matmul(points[:3]) is None  # too few points to fit


# ----------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def tiny_profile():
    from dimbench.measure.calibrate import Options, calibrate

    opts = Options(
        models=["DiT-T/2"], resolutions=[32], dtypes=["fp32"], budget_s=0.002,
        sweep_bytes=(2**12, 2**16), gemm_size=64,
    )  # fmt: skip
    return calibrate(opts)


def test_calibrate_at_tiny_sizes_measures_points_and_ceilings(tiny_profile, tmp_path):
    p = tiny_profile
    assert p.source == "measured" and p.device == "cpu"
    cats = {q["category"] for q in p.points}
    assert {"matmul", "attention", "norm", "elementwise"} <= cats
    assert all(q["ms"] > 0 for q in p.points)
    c = p.ceilings
    assert c["matmul_gflops"]["fp32"] > 0 and c["bandwidth_gbs"] > 0
    assert c["dispatch_us"] > 0 and c["framework_us"] >= 0
    assert len(p.curves["copy"]) == 2 and p.measured["models"] == ["DiT-T/2"]
    assert dp.load(p.save(tmp_path / "m.json")).points == p.points


def test_a_measured_operator_is_priced_at_its_measured_time(tiny_profile):
    stream = record_step("DiT-T/2", 32)
    cost = CostModel(tiny_profile)
    attention = next(op for op in stream.ops if op.category == "attention")
    point = next(q for q in tiny_profile.points if q["category"] == "attention")
    assert cost.op_ms(attention, framework=False) == pytest.approx(point["ms"], rel=1e-6)


# ----------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("profile", ["measured", "datasheet"])
def test_predictions_grow_with_resolution(profile, tiny_profile):
    cost = CostModel(tiny_profile if profile == "measured" else datasheet(dispatch_us=2.0))
    for name in ("DiM-T/2", "DiT-T/2"):
        latencies = [predict_stream(record_step(name, r), cost).latency_ms for r in (32, 64, 128)]
        assert latencies == sorted(latencies) and latencies[0] > 0
        p = predict_stream(record_step(name, 64), cost)
        assert p.latency_ms == pytest.approx(sum(p.category_ms.values()))
        assert p.roofline_ms <= p.latency_ms and p.peak_bytes > 0


def test_crossover_is_found_by_bisection():
    """With the roofline alone, DiM's linear-in-L scan overtakes attention's L^2 at a size
    the bisection finds between the ratio's bracketing resolutions."""
    cost = CostModel(datasheet())
    cache = {}

    def per_image(res, name):
        if (res, name) not in cache:
            cache[res, name] = predict_stream(record_step(name, res), cost).latency_ms
        return cache[res, name]

    lo, hi = 256, 2048
    assert per_image(lo, "DiM-T/2") > per_image(lo, "DiT-T/2")
    assert per_image(hi, "DiM-T/2") < per_image(hi, "DiT-T/2")
    x = crossover_px(per_image, "DiM-T/2", "DiT-T/2", lo, hi)
    assert lo < x <= hi and x % 16 == 0
    assert per_image(int(x), "DiM-T/2") < per_image(int(x), "DiT-T/2")
    assert per_image(int(x) - 16, "DiM-T/2") >= per_image(int(x) - 16, "DiT-T/2")
    assert crossover_px(per_image, "DiM-T/2", "DiT-T/2", hi, 2 * hi) is None  # already ahead


def test_predict_command_writes_rows_and_plot_draws_them(tmp_path, capsys):
    from dimbench.results import load_results

    out = tmp_path / "out"
    argv = ["predict", "--models", "DiM-T/2", "DiT-T/2", "--res", "256", "2048",
            "--device-profile", str(H100), "--dtype", "bf16", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    text = capsys.readouterr().out
    assert "h100-sxm-datasheet (datasheet)" in text and "DiM-T/2" in text
    df = load_results(out / "predict.csv")
    assert len(df) == 4 and set(df["device_profile"]) == {"h100-sxm-datasheet (datasheet)"}
    for column in ("model", "image_size", "batch_size", "dtype", "predicted_latency_ms"):
        assert df[column].notna().all()
    assert set(df["device"]) == {"cuda"} and set(df["dtype"]) == {"bf16"}
    assert cli(["plot", str(out)]) == 0
    assert (out / "scaling.png").exists()
    assert "predicted" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--models", "DiM-X/9", "--device-profile", str(H100)], "unknown model"),
        (["predict", "--device-profile", "missing.json"], "no such file"),
        (
            ["predict", "--models", "DiT-T/2", "--res", "100", "--device-profile", str(H100)],
            "not a positive multiple",
        ),  # fmt: skip
        (["calibrate", "--models", "DiM-X/9"], "unknown model"),
        (["calibrate", "--clock", "sundial"], "--clock"),
        (["profile", "DiM-X/9"], "unknown model"),
        (["profile", "DiT-T/2", "--device-profile", "missing.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path, fresh_cache):
    from dimbench.cli import main

    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "o")] if argv[0] != "calibrate" else argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unwritable_out_and_missing_profile_are_one_line_exit_2(tmp_path, capsys, fresh_cache):
    from dimbench.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv in (
        ["predict", "--models", "DiT-T/2", "--device-profile", str(H100), "--out", str(blocker)],
        ["calibrate", "--models", "DiT-T/2", "--out", str(blocker / "p.json")],
        ["predict", "--models", "DiT-T/2"],  # no profile cached for this machine
        ["calibrate", "--show"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and len(err.strip().splitlines()) == 1, (argv, err)


def test_a_matmul_into_out_is_keyed_by_its_operands_not_its_destination():
    """torch.mm(a, b, out=c), as the fused mixer writes its GEMMs, is (m, n, k) of a and b: keyed
    by b and c it lost the token count, and every resolution priced like the first."""
    import torch

    from dimbench.measure.op_recorder import OpRecorder

    a, b = torch.randn(96, 8), torch.randn(8, 32)
    with OpRecorder() as recorder:
        torch.mm(a, b, out=torch.empty(96, 32))
        torch.addmm(torch.zeros(32), a, b)
    mm, addmm = (op for op in recorder.ops if op.category == "matmul")
    assert mm.dims == addmm.dims == (1, 96, 32, 8)


def test_recording_never_touches_a_fake_tensors_memory():
    """The fused mixer asks for huge pages under its big outputs; on the fake tensors the cost
    model records with there is no memory, so nothing may read a data pointer."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*data pointer of FakeTensor.*")
        stream = record_step("DiM-T/2", 1024)
    assert stream.ops
