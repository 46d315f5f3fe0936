"""The profile figure: time per operator category stacked against resolution, one panel per
model (top row: milliseconds; bottom row: share of the step), from ``profile.csv`` rows. One
figure per (device, dtype, mode, batch) group: ``profile.png`` (``profile_<group>.png`` when
there are several). The profile suite declares it as its figure (``Suite.figure``)."""

from __future__ import annotations

from pathlib import Path

from dimbench.plots.groups import figure_stem, first_value, groups
from dimbench.plots.models import by_family
from dimbench.plots.style import CATEGORY_COLOURS, fit_suptitle, save_figure

SUITE = "profile"


def profile_groups(df):
    """The profile suite's ok category rows, split by (device, dtype, mode, batch)."""
    if "scope" not in df:
        return {}
    rows = df[(df["suite"] == SUITE) & (df["status"] == "ok") & (df["scope"] == "model")]
    return groups(rows[rows["category"] != "total"])


def plot_profile(results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), df=None):
    """Draw the profile figure(s) beside the CSVs (from ``df``, else the folder's CSVs);
    returns the paths written ([] without profile rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dimbench.bench.registry import schemas
    from dimbench.results import load_results

    results_dir = Path(results_dir)
    df = load_results(results_dir, schemas()) if df is None else df
    by_group = profile_groups(df)
    written = []
    for key, rows in by_group.items():
        fig = profile_figure(rows, key)
        stem = figure_stem("profile", key, len(by_group) > 1)
        written += save_figure(fig, results_dir / stem, formats)
        plt.close(fig)
    return written


def profile_figure(rows, key: tuple):
    """The figure of one group's category rows; the caller closes it."""
    import matplotlib.pyplot as plt

    from dimbench.measure.op_categories import CATEGORIES

    models = by_family(rows["model"].unique())
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
    name = first_value(rows)
    fit_suptitle(
        fig,
        f"dimbench profile: time per operator category ({device}, {dtype}, {mode}, "
        f"batch {batch}{', ' + name if name else ''})",
    )
    return fig


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2g} s" if value < 10_000 else f"{value / 1000:.0f} s"
    return f"{value:.3g} ms" if value >= 1 or value == 0 else f"{value:.2g} ms"
