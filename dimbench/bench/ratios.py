"""``OUT/ratios.csv``: each model's images/s over each attention baseline's, per cell, with a
95 % interval, from the per-round samples kept in ``OUT/throughput.samples.jsonl``.

Where both rows come from one paired cell (the same ``raw["cell"]["id"]``), round i of the model
and round i of the baseline ran back to back on the same machine state: the ratio is the median
of the per-round ratios and its interval a bootstrap over rounds (fixed seed). Rows measured
apart (``--unpaired``, a cell resumed for one model) give the ratio of the medians, each side
resampled on its own (``paired`` false): a wider interval, honestly.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from dimbench.measure.intervals import bootstrap_ci, ratio_of_medians_ci
from dimbench.results import ResultStore, row_key

RATIOS_FILE = "ratios.csv"
CELL_COLUMNS = ("image_size", "batch_size", "dtype", "mode", "device", "compile", "weights")
COLUMNS = (
    "model",
    "baseline",
    *CELL_COLUMNS,
    "ratio",
    "ratio_ci_lo",
    "ratio_ci_hi",
    "rounds",
    "paired",
)


def _is_baseline(name: str) -> bool:
    from dimbench.registry import UnknownModelError, get_model

    try:
        return get_model(name).baseline
    except UnknownModelError:
        return False


def latest_samples(store: ResultStore) -> list[dict]:
    """The sample record of each configuration whose latest CSV row is ok."""
    if not store.samples_path.exists():
        return []
    ok = {row_key(r) for r in store.rows() if r.get("status") == "ok"}
    latest: dict[tuple, dict] = {}
    for line in store.samples_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            continue
        if rec.get("status") == "ok" and (rec.get("timing") or {}).get("samples_ms"):
            latest[row_key(rec)] = rec
    return [rec for key, rec in latest.items() if key in ok]


def ratio_rows(records: list[dict]) -> list[dict]:
    """One row per (model, baseline) of each cell where both ran."""
    by_cell: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        by_cell.setdefault(tuple(str(rec.get(c)) for c in CELL_COLUMNS), {})[rec["model"]] = rec
    out = []
    for cell, recs in by_cell.items():
        bases = sorted(m for m in recs if _is_baseline(m))
        for model in sorted(m for m in recs if not _is_baseline(m)):
            for base in bases:
                out.append(
                    {
                        **dict(zip(CELL_COLUMNS, cell, strict=True)),
                        **_ratio(recs[model], recs[base]),
                    }
                )
    return out


def _ratio(model: dict, base: dict) -> dict:
    ta, tb = model["timing"]["samples_ms"], base["timing"]["samples_ms"]
    cell_a, cell_b = (model.get("cell") or {}).get("id"), (base.get("cell") or {}).get("id")
    head = {"model": model["model"], "baseline": base["model"]}
    if cell_a is not None and cell_a == cell_b:
        n = min(len(ta), len(tb))
        per_round = [tb[i] / ta[i] for i in range(n)]  # images/s ratio, same batch
        lo, hi = bootstrap_ci(per_round)
        return {**head, "ratio": statistics.median(per_round), "ratio_ci_lo": lo,
                "ratio_ci_hi": hi, "rounds": n, "paired": "true"}  # fmt: skip
    lo, hi = ratio_of_medians_ci(tb, ta)
    return {**head, "ratio": statistics.median(tb) / statistics.median(ta), "ratio_ci_lo": lo,
            "ratio_ci_hi": hi, "rounds": min(len(ta), len(tb)), "paired": "false"}  # fmt: skip


def write_ratios(store: ResultStore) -> Path | None:
    """Write ``OUT/ratios.csv`` from the store's samples (None when there is no pair)."""
    rows = ratio_rows(latest_samples(store))
    path = store.out_dir / RATIOS_FILE
    if not rows:
        return None
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
    return path


def read_ratios(results_dir: str | Path):
    """``ratios.csv`` of a results folder as a DataFrame (None when there is none)."""
    import pandas as pd

    path = Path(results_dir) / RATIOS_FILE
    return pd.read_csv(path) if path.exists() else None
