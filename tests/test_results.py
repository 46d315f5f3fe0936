"""The results store (rows, CSV append, resume keys, raw JSONL) and the scaling plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from dimbench.bench.registry import all_suites
from dimbench.results import (
    COLUMNS,
    KEY_COLUMNS,
    METRIC_COLUMNS,
    ResultStore,
    load_results,
    make_row,
    row_key,
)

all_suites()  # the built-in suites register their result columns

KEY = dict(
    suite="throughput",
    model="DiM-T/2",
    image_size=256,
    batch_size=1,
    device="cpu",
    dtype="fp32",
    mode="forward",
    scan_backend="cpu",
    attn_backend="-",
)


def test_columns_cover_the_issue_and_architecture():
    required = {
        "suite", "model", "image_size", "tokens", "batch_size", "device", "device_name", "dtype",
        "mode", "scan_backend", "attn_backend", "imgs_per_s", "latency_ms", "latency_iqr_ms",
        "sample_latency_s", "peak_mem_mb", "peak_mem_reserved_mb", "gmacs", "gflops", "params_m",
        "status", "error", "git_sha", "torch_version", "cuda_version", "threads",
        "energy_j_per_img", "gpu_power_w", "gpu_util_pct", "gpu_sm_clock_mhz", "gpu_temp_c",
        "timestamp",
    }  # fmt: skip
    assert required <= set(COLUMNS)
    assert set(KEY_COLUMNS) <= set(COLUMNS) and set(METRIC_COLUMNS) <= set(COLUMNS)


def test_make_row_fills_and_validates():
    row = make_row(**KEY, status="ok", imgs_per_s=2.0)
    assert list(row) == list(COLUMNS)
    assert row["imgs_per_s"] == 2.0 and row["latency_ms"] is None and row["timestamp"]
    with pytest.raises(KeyError, match="bogus"):
        make_row(**KEY, status="ok", bogus=1)
    with pytest.raises(ValueError, match="status"):
        make_row(**KEY, status="fine")


def test_append_resume_and_raw_samples(tmp_path):
    store = ResultStore(tmp_path / "out", "throughput")
    assert store.done_keys() == set()
    ok = make_row(**KEY, status="ok", imgs_per_s=3.25, latency_ms=307.7)
    oom = make_row(**{**KEY, "image_size": 1536}, status="oom", error="CUDA out of memory")
    timeout = make_row(**{**KEY, "image_size": 1024}, status="timeout", error="no result")
    store.append(ok, raw={"timing": {"samples_ms": [300.0, 307.7, 310.0]}})
    store.append(oom)
    store.append(timeout)

    rows = store.rows()
    assert [r["status"] for r in rows] == ["ok", "oom", "timeout"]
    assert rows[0]["imgs_per_s"] == "3.25" and rows[0]["image_size"] == "256"
    # a CSV-read row and a fresh row of the same measurement have the same key
    assert row_key(rows[0]) == row_key(ok)
    # ok and oom are final; a timeout is retried unless asked not to
    assert store.done_keys() == {row_key(ok), row_key(oom)}
    assert store.done_keys(retry_failed=False) == {row_key(ok), row_key(oom), row_key(timeout)}

    # a rerun's row for the timed-out config supersedes the old one
    store.append(make_row(**{**KEY, "image_size": 1024}, status="ok", imgs_per_s=0.5))
    assert row_key(timeout) in store.done_keys()
    df = load_results(tmp_path / "out")
    assert len(df) == 3
    assert df.set_index("image_size").loc[1024, "status"] == "ok"
    assert df["imgs_per_s"].dtype.kind == "f"

    raw = [json.loads(line) for line in store.samples_path.read_text().splitlines()]
    assert len(raw) == 1 and raw[0]["model"] == "DiM-T/2" and raw[0]["image_size"] == 256
    assert raw[0]["timing"]["samples_ms"] == [300.0, 307.7, 310.0]


def test_old_csv_layout_is_rewritten_not_corrupted(tmp_path):
    path = tmp_path / "memory.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "model", "image_size", "status", "peak_mem_mb"])
        w.writerow(["memory", "DiT-T/2", "64", "ok", "12.5"])
    store = ResultStore(tmp_path, "memory")
    store.append(make_row(**{**KEY, "suite": "memory"}, status="ok", peak_mem_mb=20.0))
    rows = store.rows()
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["peak_mem_mb"] == "12.5" and rows[1]["peak_mem_mb"] == "20"


# ----------------------------------------------------------------------------- plots


def _rows(tmp_path):
    """A throughput/memory/flops folder where DiM starts slower and overtakes DiT between
    512 and 1024 px, and DiT runs out of memory at 1536."""
    tp = ResultStore(tmp_path, "throughput")
    mem = ResultStore(tmp_path, "memory")
    fl = ResultStore(tmp_path, "flops")
    ips = {
        "DiM-T/2": {256: 10.0, 512: 3.0, 1024: 1.0, 1536: 0.5},
        "DiT-T/2": {256: 20.0, 512: 4.0, 1024: 0.5, 1536: None},
        "U-ViT-T/2": {256: 5.0, 512: 1.0, 1024: 0.2, 1536: 0.05},
    }
    for model, series in ips.items():
        fam = {"DiM": "dim", "DiT": "dit", "U-V": "uvit"}[model[:3]]
        for res, v in series.items():
            key = {**KEY, "model": model, "image_size": res}
            common = dict(family=fam, device_name="Test CPU", load_avg_1m=1.5)
            if v is None:
                tp.append(make_row(**key, status="oom", error="out of memory", **common))
                mem.append(make_row(**{**key, "suite": "memory"}, status="oom", **common))
            else:
                tp.append(make_row(**key, status="ok", imgs_per_s=v, latency_ms=1e3 / v, **common))
                mem.append(make_row(**{**key, "suite": "memory"}, status="ok", peak_mem_mb=res / 4))
            gmacs = (res / 16) ** 2 * (4 if fam == "dim" else (res / 256) ** 2)
            fl.append(
                make_row(
                    **{**key, "suite": "flops", "device": "meta"},
                    status="ok",
                    gmacs=gmacs,
                    gflops=2 * gmacs,
                )
            )


def test_crossover_is_interpolated_in_log_space():
    from dimbench.plots import _crossing

    # between 512 (0.75x) and 1024 (2x): log-linear, so the fraction is ln(1/0.75) / ln(2/0.75)
    expected = 512 * 2 ** (math.log(1 / 0.75) / math.log(2 / 0.75))
    assert _crossing([256, 512, 1024], [0.5, 0.75, 2.0]) == pytest.approx(expected)
    assert _crossing([256, 512], [1.2, 1.5]) is None  # ahead from the start
    assert _crossing([256, 512], [0.2, 0.5]) is None  # never
    assert _crossing([256, 512, 1024], [0.5, 1.0, 2.0]) == pytest.approx(512)


def test_comparison_pairs_by_size():
    from dimbench.plots import comparison_pairs

    assert comparison_pairs(["DiM-S/2", "DiT-S/2", "U-ViT-S/2"]) == [
        ("DiM-S/2", "DiT-S/2"),
        ("DiM-S/2", "U-ViT-S/2"),
    ]
    pairs = comparison_pairs(["DiM-S/2", "DiM-H/2", "DiT-S/2", "DiT-XL/2", "U-ViT-H/2"])
    assert ("DiM-H/2", "DiT-XL/2") in pairs and ("DiM-H/2", "U-ViT-H/2") in pairs
    assert ("DiM-S/2", "DiT-S/2") in pairs and ("DiM-S/2", "DiT-XL/2") not in pairs


def test_plot_scaling_writes_png_svg_and_summary(tmp_path):
    from dimbench.plots import plot_scaling

    _rows(tmp_path)
    out = plot_scaling(tmp_path)
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
    _rows(tmp_path)
    ResultStore(tmp_path, "throughput").append(
        make_row(**{**KEY, "dtype": "bf16"}, status="ok", imgs_per_s=12.0)
    )
    assert cli(["plot", str(tmp_path), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "scaling_cpu_fp32_forward_b1.png").exists()
    assert (tmp_path / "scaling_cpu_bf16_forward_b1.png").exists()
    assert "overtakes DiT-T/2" in out


# ----------------------------------------------------------------------------- damaged files


def test_foreign_csv_is_refused_and_left_as_it_is(tmp_path):
    from dimbench.results import ResultFileError

    path = tmp_path / "throughput.csv"
    path.write_text("name,score\nalice,3\n")
    store = ResultStore(tmp_path, "throughput")
    with pytest.raises(ResultFileError, match="not a dimbench result file"):
        store.check()
    with pytest.raises(ResultFileError):
        store.append(make_row(**KEY, status="ok"))
    assert path.read_text() == "name,score\nalice,3\n"


def test_corrupt_row_is_refused(tmp_path):
    from dimbench.results import ResultFileError

    store = ResultStore(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with store.csv_path.open("a") as f:
        f.write("throughput,DiM-T/2,too,few\n")
        f.write(",".join(["x"] * len(COLUMNS)) + "\n")  # an intact row after the broken one
    before = store.csv_path.read_text()
    with pytest.raises(ResultFileError, match="row 2 has 4 fields"):
        store.check()
    with pytest.raises(ResultFileError, match="corrupt"):
        store.append(make_row(**KEY, status="ok", imgs_per_s=2.0))
    with pytest.raises(ResultFileError, match="corrupt"):
        load_results(tmp_path)
    assert store.csv_path.read_text() == before


def test_binary_bytes_are_refused_naming_the_file_and_line(tmp_path, capsys):
    from dimbench.cli import main

    store = ResultStore(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with store.csv_path.open("ab") as f:
        f.write(b"\xff\xfe\x00binary tail")
    before = store.csv_path.read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert str(store.csv_path) in err and "line 3" in err and "move the file away" in err
    assert store.csv_path.read_bytes() == before


def test_truncated_last_row_keeps_the_intact_rows(tmp_path):
    """A writer killed mid-row: the next append lands on its own line, readers skip the stub."""
    store = ResultStore(tmp_path, "throughput")
    store.append(make_row(**{**KEY, "image_size": 32}, status="ok", imgs_per_s=1.0))
    store.append(make_row(**{**KEY, "image_size": 64}, status="ok", imgs_per_s=2.0))
    text = store.csv_path.read_text()
    store.csv_path.write_text(text[: len(text) - 40])  # cut inside the second row
    assert [r["image_size"] for r in store.rows()] == ["32"]
    assert len(load_results(tmp_path)) == 1
    store.append(make_row(**{**KEY, "image_size": 64}, status="ok", imgs_per_s=3.0))
    rows = store.rows()
    assert [(r["image_size"], r["imgs_per_s"]) for r in rows] == [("32", "1"), ("64", "3")]
    assert len(load_results(tmp_path)) == 2


def test_complete_last_row_without_newline_is_kept(tmp_path):
    store = ResultStore(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    store.csv_path.write_text(store.csv_path.read_text().rstrip("\r\n"))
    store.append(make_row(**{**KEY, "image_size": 64}, status="ok", imgs_per_s=2.0))
    assert [r["image_size"] for r in store.rows()] == ["256", "64"]


def test_plot_refuses_header_only_results(tmp_path, capsys):
    from dimbench.cli import main

    (tmp_path / "throughput.csv").write_text(",".join(COLUMNS) + "\n")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")  # not ours: skipped, not an error
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no result rows" in err and "\n" not in err
