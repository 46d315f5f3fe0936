"""The results store (rows, CSV append, resume keys, raw JSONL), each suite's schema, and old
CSVs that carried every suite's columns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dimbench.results import (
    COMMON_COLUMNS,
    HEAD_COLUMNS,
    KEY_COLUMNS,
    TAIL_COLUMNS,
    Schema,
    load_results,
    row_key,
)
from tests.rows import KEY, SCHEMAS, make_row, store_of

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "amd-epyc-avx512-2c"
# the one layout every suite's CSV had before each suite had its own schema
OLD_LAYOUT_COLUMNS = 64


def old_layout_csv(suite: str) -> Path:
    """A committed CSV still in the old layout: the machine folder's throughput.csv has been
    appended to (and so rewritten) since; its paper-pairing one has not."""
    if suite == "throughput":
        return COMMITTED / "paper-pairing" / "throughput.csv"
    return COMMITTED / f"{suite}.csv"


def test_columns_cover_the_issue_and_architecture():
    required = {
        "suite", "model", "image_size", "tokens", "batch_size", "device", "device_name", "dtype",
        "mode", "scan_backend", "attn_backend", "imgs_per_s", "latency_ms", "latency_iqr_ms",
        "sample_latency_s", "peak_mem_mb", "peak_mem_reserved_mb", "gmacs", "gflops", "params_m",
        "status", "error", "git_sha", "torch_version", "cuda_version", "threads",
        "energy_j_per_img", "gpu_power_w", "gpu_util_pct", "gpu_sm_clock_mhz", "gpu_temp_c",
        "timestamp",
    }  # fmt: skip
    assert required <= set(SCHEMAS["throughput"].columns)
    for schema in SCHEMAS.values():
        assert set(KEY_COLUMNS) <= set(schema.columns) and set(schema.metrics) <= set(
            schema.columns
        )


def test_make_row_fills_and_validates():
    row = make_row(**KEY, status="ok", imgs_per_s=2.0)
    assert list(row) == list(SCHEMAS["throughput"].columns)
    assert row["imgs_per_s"] == 2.0 and row["latency_ms"] is None and row["timestamp"]
    with pytest.raises(KeyError, match="bogus"):
        make_row(**KEY, status="ok", bogus=1)
    with pytest.raises(ValueError, match="status"):
        make_row(**KEY, status="fine")


def test_append_resume_and_raw_samples(tmp_path):
    store = store_of(tmp_path / "out", "throughput")
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
    df = load_results(tmp_path / "out", SCHEMAS)
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
    store = store_of(tmp_path, "memory")
    store.append(make_row(**{**KEY, "suite": "memory"}, status="ok", peak_mem_mb=20.0))
    rows = store.rows()
    assert list(rows[0]) == list(SCHEMAS["memory"].columns)
    assert rows[0]["peak_mem_mb"] == "12.5" and rows[1]["peak_mem_mb"] == "20"


# ----------------------------------------------------------------------------- schemas


def test_a_suites_csv_holds_the_common_columns_and_its_own_only(tmp_path):
    """Each suite's CSV: the common key and provenance columns plus the suite's declared ones
    (before each suite had its own schema, every CSV had all 64 of every suite)."""
    store = store_of(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with store.csv_path.open(newline="") as f:
        header = next(csv.reader(f))
    throughput = SCHEMAS["throughput"]
    assert header == [*HEAD_COLUMNS, *throughput.metrics, *TAIL_COLUMNS]
    assert len(header) < OLD_LAYOUT_COLUMNS
    for other in ("scope", "category", "op", "predicted_latency_ms", "device_profile"):
        assert other not in header
    # each suite's schema comes from its declaration: its columns and key columns
    assert SCHEMAS["predict"].keys == ("device_profile",)
    assert SCHEMAS["profile"].row_keys == ("scope", "category")
    assert set(SCHEMAS["flops"].metrics) == {"gmacs", "gflops", "params_m"}
    with pytest.raises(KeyError, match="unknown throughput result columns: scope"):
        make_row(**KEY, status="ok", scope="model")


def test_a_schema_refuses_bad_declarations():
    with pytest.raises(ValueError, match="key columns"):
        Schema("x", {"a": "a column"}, keys=("b",))
    with pytest.raises(ValueError, match="common result columns"):
        Schema("x", {"status": "mine"})


def test_a_column_means_one_thing_in_every_suite():
    import dataclasses

    from dimbench.bench import get_suite, register_suite

    flops = get_suite("flops")
    clash = dataclasses.replace(flops, name="flops2", columns={"gflops": "something else"})
    with pytest.raises(ValueError, match="'gflops' of suite 'flops2' means"):
        register_suite(clash)


@pytest.mark.parametrize("suite", ["throughput", "memory", "flops", "profile", "predict"])
def test_committed_old_layout_csvs_load_with_the_same_values(suite, tmp_path):
    """results/amd-epyc-avx512-2c holds CSVs in the old layout (every suite's columns): read with
    the suite's schema, every value is the one in the file, and only empty columns are left out."""
    shutil.copy(old_layout_csv(suite), tmp_path)
    path = tmp_path / f"{suite}.csv"
    raw = pd.read_csv(path, dtype={"git_sha": str})
    assert len(raw.columns) > len(SCHEMAS[suite].columns)  # the old layout
    df = load_results(tmp_path, SCHEMAS)
    assert len(df) == len(raw)  # no row of these files supersedes another
    assert list(df.columns) == list(SCHEMAS[suite].columns)
    for column in raw.columns:
        if column in df.columns:
            same = (df[column] == raw[column]) | (df[column].isna() & raw[column].isna())
            assert same.all(), column
        else:
            assert raw[column].isna().all(), column  # another suite's column, empty here


def test_appending_to_an_old_layout_csv_rewrites_it_in_the_suites_own(tmp_path):
    shutil.copy(old_layout_csv("throughput"), tmp_path)
    store = store_of(tmp_path, "throughput")
    before = store.rows()
    with store.csv_path.open(newline="") as f:
        assert len(next(csv.reader(f))) == OLD_LAYOUT_COLUMNS
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with store.csv_path.open(newline="") as f:
        assert next(csv.reader(f)) == list(SCHEMAS["throughput"].columns)
    after = store.rows()
    assert after[:-1] == before and after[-1]["imgs_per_s"] == "1"


def test_an_old_layout_column_that_holds_a_value_is_kept(tmp_path):
    """Rewriting drops only empty columns: a value in a column the suite no longer declares
    (or a newer dimbench's) stays in the file and in what is read."""
    path = tmp_path / "throughput.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "model", "image_size", "status", "imgs_per_s", "scope", "op"])
        w.writerow(["throughput", "DiT-T/2", "64", "ok", "2.5", "model", ""])
    store = store_of(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    assert "scope" in header and "op" not in header
    assert header.index("scope") < header.index("status")  # before the common tail
    rows = store.rows()
    assert [r["scope"] for r in rows] == ["model", ""] and rows[0]["imgs_per_s"] == "2.5"
    df = load_results(tmp_path, SCHEMAS)
    assert list(df["scope"].fillna("")) == ["model", ""]


def test_a_csv_of_an_undeclared_suite_reads_with_its_header_as_its_schema(tmp_path):
    """A plugin's suite whose module was not imported: its rows still read, its columns as
    its header has them, a rerun's row replacing the earlier one by the common key."""
    path = tmp_path / "mysuite.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*COMMON_COLUMNS, "score"])
        for stamp, score in (("2026-01-01T00:00:00Z", "1.5"), ("2026-01-02T00:00:00Z", "2.5")):
            row = {**dict.fromkeys(COMMON_COLUMNS, ""), **KEY, "suite": "mysuite"}
            row.update(status="ok", timestamp=stamp, score=score)
            w.writerow([row[c] for c in [*COMMON_COLUMNS, "score"]])
    store_of(tmp_path, "throughput").append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    df = load_results(tmp_path, SCHEMAS)
    mine = df[df["suite"] == "mysuite"]
    assert list(mine["score"]) == [2.5]
    assert list(df[df["suite"] == "throughput"]["imgs_per_s"]) == [1.0]


# ----------------------------------------------------------------------------- damaged files


def test_foreign_csv_is_refused_and_left_as_it_is(tmp_path):
    from dimbench.results import ResultFileError

    path = tmp_path / "throughput.csv"
    path.write_text("name,score\nalice,3\n")
    store = store_of(tmp_path, "throughput")
    with pytest.raises(ResultFileError, match="not a dimbench result file"):
        store.check()
    with pytest.raises(ResultFileError):
        store.append(make_row(**KEY, status="ok"))
    assert path.read_text() == "name,score\nalice,3\n"


def test_corrupt_row_is_refused(tmp_path):
    from dimbench.results import ResultFileError

    store = store_of(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    with store.csv_path.open("a") as f:
        f.write("throughput,DiM-T/2,too,few\n")
        f.write(
            ",".join(["x"] * len(SCHEMAS["throughput"].columns)) + "\n"
        )  # an intact row after the broken one
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

    store = store_of(tmp_path, "throughput")
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
    store = store_of(tmp_path, "throughput")
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
    store = store_of(tmp_path, "throughput")
    store.append(make_row(**KEY, status="ok", imgs_per_s=1.0))
    store.csv_path.write_text(store.csv_path.read_text().rstrip("\r\n"))
    store.append(make_row(**{**KEY, "image_size": 64}, status="ok", imgs_per_s=2.0))
    assert [r["image_size"] for r in store.rows()] == ["256", "64"]


def test_plot_refuses_header_only_results(tmp_path, capsys):
    from dimbench.cli import main

    (tmp_path / "throughput.csv").write_text(",".join(SCHEMAS["throughput"].columns) + "\n")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")  # not ours: skipped, not an error
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no result rows" in err and "\n" not in err
