"""The scaling figures and the summary of a results folder: crossovers, the panels the suites
declare, one figure per group."""

from __future__ import annotations

import math

import pytest

from dimbench.results import load_results
from tests.plots.folders import scaling_folder
from tests.rows import KEY, SCHEMAS, make_row, store_of


def test_crossover_is_interpolated_in_log_space():
    from dimbench.plots.crossover import crossing as _crossing

    # between 512 (0.75x) and 1024 (2x): log-linear, so the fraction is ln(1/0.75) / ln(2/0.75)
    expected = 512 * 2 ** (math.log(1 / 0.75) / math.log(2 / 0.75))
    assert _crossing([256, 512, 1024], [0.5, 0.75, 2.0]) == pytest.approx(expected)
    assert _crossing([256, 512], [1.2, 1.5]) is None  # ahead from the start
    assert _crossing([256, 512], [0.2, 0.5]) is None  # never
    assert _crossing([256, 512, 1024], [0.5, 1.0, 2.0]) == pytest.approx(512)


def test_comparison_pairs_by_size():
    from dimbench.plots.crossover import comparison_pairs

    assert comparison_pairs(["DiM-S/2", "DiT-S/2", "U-ViT-S/2"]) == [
        ("DiM-S/2", "DiT-S/2"),
        ("DiM-S/2", "U-ViT-S/2"),
    ]
    pairs = comparison_pairs(["DiM-S/2", "DiM-H/2", "DiT-S/2", "DiT-XL/2", "U-ViT-H/2"])
    assert ("DiM-H/2", "DiT-XL/2") in pairs and ("DiM-H/2", "U-ViT-H/2") in pairs
    assert ("DiM-S/2", "DiT-S/2") in pairs and ("DiM-S/2", "DiT-XL/2") not in pairs


def test_plot_scaling_writes_png_svg_and_summary(tmp_path):
    from dimbench.plots.folder import plot_results
    from dimbench.plots.summary import write_summary

    scaling_folder(tmp_path)
    out = plot_results(tmp_path)
    assert write_summary(tmp_path, load_results(tmp_path, SCHEMAS), out) == tmp_path / "summary.md"
    names = sorted(p.name for p in out["figures"])
    assert names == ["scaling.png", "scaling.svg"]
    png = (tmp_path / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    svg = (tmp_path / "scaling.svg").read_text()
    assert "OOM" in svg  # DiT's 1536 px point is marked

    assert list(out["crossovers"]) == ["cpu, fp32, forward, batch 1", "GFLOPs, forward"]
    cross = out["crossovers"]["cpu, fp32, forward, batch 1"]
    by_base = {c.baseline: c for c in cross}
    dit = by_base["DiT-T/2"]
    assert dit.resolutions == [256, 512, 1024]
    assert dit.ratios == pytest.approx([0.5, 0.75, 2.0])
    assert 512 < dit.crossover_px < 1024
    assert "1536 px DiT-T/2 gave oom" in dit.note
    assert by_base["U-ViT-T/2"].crossover_px is None  # DiM ahead everywhere
    summary = (tmp_path / "summary.md").read_text()
    assert "DiM-T/2 overtakes DiT-T/2 at about" in summary
    assert "DiM-T/2 is faster than U-ViT-T/2 at every resolution" in summary
    assert "![scaling](scaling.png)" in summary
    # the synthetic FLOPs: DiM 4 x tokens, baselines tokens x (res/256)^2 -> equal at 512 px
    (flops,) = [c for c in out["crossovers"]["GFLOPs, forward"] if c.baseline == "DiT-T/2"]
    assert flops.kind == "flops" and flops.crossover_px == pytest.approx(512)
    assert "DiM-T/2 needs fewer GFLOPs than DiT-T/2 from about 512 px" in summary


def cli(args: list[str]) -> int:
    from dimbench.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_plot_command_errors_are_one_line(tmp_path, capsys):
    assert cli(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dimbench: error: no result CSVs") and "\n" not in err


def test_plot_command_groups_by_configuration(tmp_path, capsys):
    scaling_folder(tmp_path)
    store_of(tmp_path, "throughput").append(
        make_row(**{**KEY, "dtype": "bf16"}, status="ok", imgs_per_s=12.0)
    )
    assert cli(["plot", str(tmp_path), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "scaling_cpu_fp32_forward_b1.png").exists()
    assert (tmp_path / "scaling_cpu_bf16_forward_b1.png").exists()
    assert "overtakes DiT-T/2" in out


def test_a_too_big_point_is_marked_like_an_oom(tmp_path):
    from dimbench.plots.folder import plot_results

    scaling_folder(tmp_path)
    key = {**KEY, "model": "U-ViT-T/2", "image_size": 2048}
    error = "predicted peak memory 90,000 MB > 24,000 MB"
    row = make_row(**key, family="uvit", status="too_big", error=error, predicted_peak_mem_mb=9e4)
    store_of(tmp_path, "throughput").append(row)
    plot_results(tmp_path)
    assert "too big" in (tmp_path / "scaling.svg").read_text()


def test_the_crossover_interval_is_where_the_bands_cross_1():
    from dimbench.plots.crossover import crossing, crossing_range

    res, lo, mid, hi = [256, 512, 1024], [0.4, 0.6, 1.5], [0.5, 0.75, 2.0], [0.6, 0.9, 2.6]
    early, late = crossing_range(res, lo, hi)
    assert early == pytest.approx(crossing(res, hi)) and late == pytest.approx(crossing(res, lo))
    assert early < crossing(res, mid) < late
    assert crossing_range([256, 512], [0.5, 0.9], [1.1, 1.3]) == (None, None)  # open both ends
    assert crossing_range(res, [0.4, 0.6, 0.9], hi)[1] is None  # the lower band stays below 1


def test_paired_ratios_give_the_crossover_as_an_interval(tmp_path):
    from dimbench.plots.folder import plot_results
    from dimbench.plots.summary import write_summary

    scaling_folder(tmp_path)
    head = "model,baseline,image_size,batch_size,dtype,mode,device,compile,weights,"
    lines = [head + "ratio,ratio_ci_lo,ratio_ci_hi,rounds,paired"]
    for res, q, a, b in ((256, 0.5, 0.45, 0.55), (512, 0.75, 0.7, 0.8), (1024, 2.0, 1.8, 2.2)):
        lines.append(f"DiM-T/2,DiT-T/2,{res},1,fp32,forward,cpu,eager,,{q},{a},{b},10,true")
    (tmp_path / "ratios.csv").write_text("\n".join(lines) + "\n")
    out = plot_results(tmp_path, formats=("png",))
    (dit,) = [
        c for c in out["crossovers"]["cpu, fp32, forward, batch 1"] if c.baseline == "DiT-T/2"
    ]
    assert dit.ratios_lo == [0.45, 0.7, 1.8] and dit.ratios_hi == [0.55, 0.8, 2.2]
    early, late = dit.crossover_range
    assert 512 < early < dit.crossover_px < late < 1024
    words = f"DiM-T/2 overtakes DiT-T/2 between {early:.0f} and {late:.0f} px"
    assert dit.sentence().startswith(words)
    assert "1024: 2.00x [1.80, 2.20]" in dit.sentence()
    write_summary(tmp_path, load_results(tmp_path, SCHEMAS), out)
    assert words in (tmp_path / "summary.md").read_text()


def test_without_paired_ratios_the_rows_intervals_give_a_wider_band():
    import pandas as pd

    from dimbench.bench.registry import get_suite
    from dimbench.plots.crossover import crossovers

    rows = []
    for model, ips in (("DiM-T/2", (1.0, 4.0)), ("DiT-T/2", (2.0, 2.0))):
        for res, v in zip((256, 512), ips, strict=True):
            rows.append({**KEY, "model": model, "image_size": res, "status": "ok",
                         "imgs_per_s": v, "imgs_per_s_ci_lo": 0.9 * v,
                         "imgs_per_s_ci_hi": 1.1 * v})  # fmt: skip
    (c,) = crossovers(pd.DataFrame(rows), get_suite("throughput"))
    assert c.ratios == pytest.approx([0.5, 2.0])
    assert c.ratios_lo == pytest.approx([0.5 * 0.9 / 1.1, 2.0 * 0.9 / 1.1])
    assert c.ratios_hi == pytest.approx([0.5 * 1.1 / 0.9, 2.0 * 1.1 / 0.9])
    assert "between" in c.sentence()
