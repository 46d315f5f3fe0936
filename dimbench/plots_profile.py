"""The profile figure: time per operator category stacked against resolution, one panel per
model (top row: milliseconds; bottom row: share of the step), from ``profile.csv`` rows. One
figure per (device, dtype, mode, batch) group: ``profile.png`` (``profile_<group>.png`` when
there are several)."""

from __future__ import annotations

import re
from pathlib import Path

CATEGORY_COLOURS = {
    "scan": "#08519c",
    "attention": "#d94801",
    "matmul": "#6a51a3",
    "conv": "#238b45",
    "norm": "#c6dbef",
    "elementwise": "#fdae6b",
    "copy": "#fa9fb5",
    "optimizer": "#969696",
    "other": "#d9d9d9",
    "overhead": "#525252",
}
GROUP_KEYS = ["device", "dtype", "mode", "batch_size"]


def profile_groups(df):
    """The profile suite's ok category rows, split by (device, dtype, mode, batch)."""
    rows = df[(df["suite"] == "profile") & (df["status"] == "ok") & (df["scope"] == "model")]
    rows = rows[rows["category"] != "total"]
    if rows.empty:
        return {}
    return {tuple(k): g for k, g in rows.groupby(GROUP_KEYS, sort=True)}


def plot_profile(results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), df=None):
    """Draw the profile figure(s) beside the CSVs; returns the paths written ([] without
    profile rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dimbench.measure.op_categories import CATEGORIES
    from dimbench.plots import model_family
    from dimbench.results import load_results

    results_dir = Path(results_dir)
    df = load_results(results_dir) if df is None else df
    if df.empty or "scope" not in df:
        return []
    groups = profile_groups(df)
    written = []
    for key, rows in groups.items():
        models = sorted(rows["model"].unique(), key=lambda n: (model_family(n), n))
        present = [c for c in CATEGORIES if rows.loc[rows["category"] == c, "time_ms"].sum() > 0]
        cols = len(models)
        fig, axes = plt.subplots(
            2, cols, figsize=(max(4.5, 4.2 * cols), 7.5), squeeze=False, constrained_layout=True
        )
        for i, model in enumerate(models):
            sub = rows[rows["model"] == model]
            sizes = sorted(int(s) for s in sub["image_size"].unique())
            x = list(range(len(sizes)))
            for row, what in ((0, "time_ms"), (1, "share")):
                ax = axes[row][i]
                bottom = [0.0] * len(sizes)
                for category in present:
                    values = []
                    for s in sizes:
                        sel = sub[(sub["image_size"] == s) & (sub["category"] == category)]
                        v = float(sel[what].iloc[0]) if len(sel) and sel[what].notna().any() else 0
                        values.append(v * (100 if what == "share" else 1))
                    ax.bar(x, values, bottom=bottom, color=CATEGORY_COLOURS.get(category),
                           label=category, width=0.7, edgecolor="white", linewidth=0.4)  # fmt: skip
                    bottom = [b + v for b, v in zip(bottom, values, strict=True)]
                ax.set_xticks(x, [str(s) for s in sizes])
                ax.set_xlabel("image size (px)")
                if row == 0:
                    ax.set_title(model)
                    ax.set_ylabel("time per step (ms)")
                    for xi, total in zip(x, bottom, strict=True):
                        ax.annotate(_ms(total), (xi, total), ha="center", va="bottom", fontsize=7)
                    ax.set_ylim(0, max(bottom) * 1.12 if max(bottom) > 0 else 1)
                else:
                    ax.set_ylabel("share of the step (%)")
                    ax.set_ylim(0, 100)
                ax.grid(True, axis="y", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles[::-1], labels[::-1], loc="outside right center", fontsize=8,
                   frameon=False)  # fmt: skip
        device, dtype, mode, batch = key
        name = _first(rows, "device_name")
        fig.suptitle(
            f"dimbench profile: time per operator category ({device}, {dtype}, {mode}, "
            f"batch {batch}{', ' + name if name else ''})"
        )
        stem = "profile" if len(groups) == 1 else "profile_" + _slug(key)
        for fmt in formats:
            path = results_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=130 if fmt == "png" else None)
            written.append(path)
        plt.close(fig)
    return written


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2g} s" if value < 10_000 else f"{value / 1000:.0f} s"
    return f"{value:.3g} ms" if value >= 1 or value == 0 else f"{value:.2g} ms"


def _first(rows, column: str) -> str:
    if column in rows and rows[column].notna().any():
        return str(rows[column].dropna().iloc[0])
    return ""


def _slug(key: tuple) -> str:
    device, dtype, mode, batch = key
    return re.sub(r"[^a-z0-9_]+", "-", f"{device}_{dtype}_{mode}_b{batch}".lower())
