"""The scaling figures of a results folder: each suite's declared panels against resolution (log
axes, one line per model, OOM/timeout marked), a panel declared ``over`` another drawn dashed
inside it, and the model-over-baseline ratio of the suites that declare one, with the
resolution where each model overtakes each baseline.

One figure per (device, dtype, mode, batch) group of the grouped suites' rows; the rows of an
ungrouped suite (FLOPs: the same on every device) are drawn in each. Nothing here names a suite:
what is drawn comes from the declarations (``dimbench.bench.spec.Suite``, ``Panel``, ``Ratio``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dimbench.bench.spec import Panel, Suite
from dimbench.plots.crossover import Bands, Crossover, crossovers, paired_bands
from dimbench.plots.groups import figure_stem, first_value, group_label, groups, split
from dimbench.plots.models import by_family, families
from dimbench.plots.style import (
    empty_panel,
    fit_suptitle,
    log_axes,
    model_styles,
    plain_log_ticks,
    save_figure,
    stack_labels,
)

FAILED_MARK = {"oom": "OOM", "too_big": "too big", "timeout": "timeout", "error": "error"}


@dataclass
class Rows:
    """A results folder's rows as the figures draw them: per suite drawn (those with panels or
    a ratio, and rows), per group, or the same in every group for an ungrouped suite."""

    suites: dict[str, Suite]
    ungrouped: dict[str, object]
    grouped: dict[str, dict[tuple, object]]
    none: object  # an empty frame with the folder's columns

    @classmethod
    def of(cls, df, suites: list[Suite]) -> Rows:
        drawn = {
            s.name: s for s in suites if (s.panels or s.ratio) and (df["suite"] == s.name).any()
        }
        own = {name: df[df["suite"] == name] for name in drawn}
        return cls(
            suites=drawn,
            ungrouped={n: _one_mode(r) for n, r in own.items() if not drawn[n].grouped},
            grouped={n: groups(r) for n, r in own.items() if drawn[n].grouped},
            none=df.iloc[0:0],
        )

    def of_suite(self, name: str, key: tuple | None):
        if name in self.ungrouped:
            return self.ungrouped[name]
        return self.grouped.get(name, {}).get(key, self.none)

    def keys(self) -> list[tuple | None]:
        found = sorted({k for by_key in self.grouped.values() for k in by_key})
        return found or [None]


def _one_mode(rows):
    """An ungrouped suite's rows in one mode: forward if there is one."""
    modes = set(rows["mode"])
    return rows[rows["mode"] == ("forward" if "forward" in modes else sorted(modes)[0])]


@dataclass
class PanelPlan:
    """A panel of the figure: a suite's declared panel, and the one drawn over it, if any."""

    suite: Suite
    panel: Panel
    over: tuple[Suite, Panel] | None = None


def panel_plans(suites: dict[str, Suite]) -> list[PanelPlan]:
    """Every declared panel of ``suites``; one declared ``over`` a metric another panel draws
    goes inside that panel instead of its own."""
    declared = [(s, p) for s in suites.values() for p in s.panels]
    metrics = {p.metric for _, p in declared}
    over = {p.over: (s, p) for s, p in declared if p.over in metrics}
    return [PanelPlan(s, p, over.get(p.metric)) for s, p in declared if p.over not in metrics]


@dataclass
class ScalingFigure:
    stem: str  # the file name without its extension
    label: str  # the group, e.g. "cpu, fp32, forward, batch 1"
    figure: object
    crossovers: list[Crossover]  # of the group's first suite with a ratio that gives some
    # those of the group's other suites with a ratio, by the words that mark them
    tagged: dict[str, list[Crossover]] = field(default_factory=dict)


def scaling_figures(df, suites: list[Suite], bands: Bands | None = None) -> Iterator[ScalingFigure]:
    """The scaling figure of each group of ``df``'s rows (``image_size``, ``batch_size`` as
    numbers), drawn from ``suites``' declarations (``bands``: the paired ratios of
    ``ratios.csv``, ``crossover.paired_bands``); the caller closes each."""
    rows = Rows.of(df, suites)
    plans = panel_plans(rows.suites)
    styles = model_styles(df["model"])
    side = next(iter(side_crossovers(rows).values()), [])
    keys = rows.keys()
    for key in keys:
        found = [
            (s, crossovers(r, s, bands))
            for s in rows.suites.values()
            if s.ratio and s.grouped and not (r := rows.of_suite(s.name, key)).empty
        ]
        found = [(s, c) for s, c in found if c]
        first = found[0][1] if found else []
        tagged = {s.ratio.tag or s.name: c for s, c in found[1:]}
        label = group_label(key) if key else "ungrouped rows only"
        fig, labels = _figure(
            rows, plans, key, styles, first or side, [c for cs in tagged.values() for c in cs]
        )
        device = first_value(*(rows.of_suite(n, key) for n, s in rows.suites.items() if s.grouped))
        fit_suptitle(fig, f"dimbench scaling: {label}" + (f" on {device}" if device else ""))
        stack_labels(fig, labels)
        yield ScalingFigure(figure_stem("scaling", key, len(keys) > 1), label, fig, first, tagged)


def plot_scaling(
    results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), rows=None
) -> dict:
    """Draw ``scaling*.png/svg`` beside the CSVs in ``results_dir`` (from ``rows``, else its
    CSVs). Returns {"figures": [paths], "crossovers": {label: [Crossover]}}: per group, plus
    one entry per ungrouped suite with a ratio (e.g. "GFLOPs, forward")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dimbench.bench.registry import all_suites, schemas
    from dimbench.results import load_results

    results_dir = Path(results_dir)
    df = load_results(results_dir, schemas()) if rows is None else rows.copy()
    if df.empty:
        raise FileNotFoundError(f"no result CSVs in {results_dir}")
    df["image_size"] = df["image_size"].astype(int)
    df["batch_size"] = df["batch_size"].astype(int)
    suites = all_suites()
    figures, found = [], {}
    from dimbench.bench.ratios import read_ratios

    bands = paired_bands(read_ratios(results_dir))
    for drawn in scaling_figures(df, suites, bands):
        figures += save_figure(drawn.figure, results_dir / drawn.stem, formats)
        plt.close(drawn.figure)
        found[drawn.label] = drawn.crossovers
        found.update({f"{drawn.label}, {tag}": c for tag, c in drawn.tagged.items()})
    found.update(side_crossovers(Rows.of(df, suites)))
    return {"figures": figures, "crossovers": found}


def side_crossovers(rows: Rows) -> dict[str, list[Crossover]]:
    """The crossovers of each ungrouped suite with a ratio, e.g. {"GFLOPs, forward": [...]}:
    the ratio panel of a group that has none of its own draws the first."""
    found = {}
    for name, own in rows.ungrouped.items():
        ratio = rows.suites[name].ratio
        items = crossovers(own, rows.suites[name]) if ratio else []
        if items:
            found[f"{ratio.name}, {own['mode'].iloc[0]}"] = items
    return found


def _figure(rows: Rows, plans: list[PanelPlan], key, styles, cross, tagged):
    import matplotlib.pyplot as plt

    n = len(plans) + 1
    cols = 2 if n > 1 else 1
    fig, axes = plt.subplots(
        math.ceil(n / cols), cols, figsize=(12, 4.5 * math.ceil(n / cols)),
        constrained_layout=True, squeeze=False,
    )  # fmt: skip
    axes = list(axes.ravel())
    for ax, plan in zip(axes, plans, strict=False):
        _panel(ax, plan, rows, key, styles)
    ax_ratio = axes[len(plans)]
    labels = _plot_ratio(ax_ratio, cross + tagged, styles)
    models = families(c.model for c in cross) or "models"
    ax_ratio.set_title(f"{models} over baselines (>1: {models} ahead)")
    for ax in axes[len(plans) + 1 :]:
        ax.set_visible(False)
    return fig, labels


def _panel(ax, plan: PanelPlan, rows: Rows, key, styles) -> None:
    suite, panel = plan.suite, plan.panel
    own, source = _panel_rows(plan, rows, key)
    title = panel.title
    if not suite.grouped and not own.empty:
        title += f" ({own['mode'].iloc[0]})"
    over = rows.of_suite(plan.over[0].name, key) if plan.over else rows.none
    if not over.empty:
        tag = plan.over[1].tag or plan.over[0].name
        title += f" (dashed: {tag})" if not own.empty else f" ({tag})"
    ax.set_title(title)
    if own.empty and over.empty:
        empty_panel(ax, f"no {suite.name} rows")
        return
    ylabel = panel.ylabel_for(key[0] if key else None) + source
    if not own.empty:
        _plot_metric(ax, own, panel, ylabel, styles)
    if not over.empty:
        _plot_over(ax, over, plan.over, ylabel, own.empty, styles)


def _panel_rows(plan: PanelPlan, rows: Rows, key) -> tuple[object, str]:
    """The rows a panel draws in the figure of group ``key`` and a note on where they came
    from ("" when from its own suite)."""
    own = rows.of_suite(plan.suite.name, key)
    if not own.empty:
        return own, ""
    for other in plan.panel.fallback:
        found = rows.of_suite(other, key)
        metric = plan.panel.metric
        if not found.empty and metric in found and found[metric].notna().any():
            return found, f", from the {other} runs"
    return own, ""


def _plot_metric(ax, df, panel: Panel, ylabel: str, styles) -> None:
    import matplotlib.transforms as mtransforms

    top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    names = by_family(df["model"].unique())
    for name in names:
        rows = df[df["model"] == name].sort_values(panel.x)
        style = styles[name]
        ok = rows[rows["status"] == "ok"]
        y = ok[panel.metric].astype(float)
        if panel.per_image:
            y = y / ok["batch_size"].astype(float)
        ax.plot(ok[panel.x], y, label=name, linewidth=1.8, markersize=5, **style)
        lo_col, hi_col = f"{panel.metric}_ci_lo", f"{panel.metric}_ci_hi"
        if lo_col in ok and hi_col in ok:  # the 95 % interval of each point
            scale = ok["batch_size"].astype(float) if panel.per_image else 1.0
            lo = ok[lo_col].astype(float) / scale
            hi = ok[hi_col].astype(float) / scale
            known = lo.notna() & hi.notna()
            if known.any():
                ax.errorbar(
                    ok[panel.x][known], y[known],
                    yerr=[(y - lo)[known].clip(lower=0), (hi - y)[known].clip(lower=0)],
                    fmt="none", ecolor=style["color"], elinewidth=1, capsize=2,
                )  # fmt: skip
        for _, r in rows[rows["status"] != "ok"].iterrows():
            ax.plot(
                r[panel.x], 0.96, transform=top, marker="x", color=style["color"],
                markersize=9, markeredgewidth=2, linestyle="none", clip_on=False,
            )  # fmt: skip
            ax.annotate(
                FAILED_MARK.get(r["status"], r["status"]),
                (r[panel.x], 0.96),
                xycoords=top,
                xytext=(5, -3),
                textcoords="offset points",
                fontsize=7,
                color=style["color"],
            )
    log_axes(ax, df[panel.x], "image size (px)" if panel.x == "image_size" else panel.x)
    plain_log_ticks(ax)
    ax.set_ylabel(ylabel)
    if names:
        ax.legend(fontsize=8, frameon=False)


def _plot_over(ax, rows, over: tuple[Suite, Panel], ylabel: str, alone: bool, styles) -> None:
    """Another suite's panel drawn inside this one: dashed lines, labelled with its tag (and
    the key columns that tell its measurements apart, where they differ)."""
    suite, panel = over
    parts = split(rows, suite.keys)
    names = by_family(rows["model"].unique())
    for part, sub in parts:
        for name in names:
            ok = sub[(sub["model"] == name) & (sub["status"] == "ok")].sort_values("image_size")
            if ok.empty:
                continue
            tag = f" ({part})" if len(parts) > 1 and part else ""
            ax.plot(
                ok["image_size"], ok[panel.metric].astype(float),
                label=" ".join(filter(None, (name, panel.tag))) + tag,
                linewidth=1.4, linestyle="--", markersize=4, markerfacecolor="none",
                **styles[name],
            )  # fmt: skip
    if alone:
        log_axes(ax, rows["image_size"])
        ax.set_ylabel(ylabel)
    else:
        sizes = sorted({int(x) for x in ax.get_xticks()} | {int(s) for s in rows["image_size"]})
        log_axes(ax, sizes)
    plain_log_ticks(ax)
    ax.legend(fontsize=7, frameon=False)


def _plot_ratio(ax, cross: list[Crossover], styles) -> list:
    """The ratio lines (colour: the baseline's, marker: the model's), a dotted line at each
    crossover and its label; returns the labels."""
    sizes, labels = [], []
    for c in cross:
        if not c.ratios:
            continue
        style = {"color": styles[c.baseline]["color"], "marker": styles[c.model]["marker"]}
        higher = c.ratio.higher_is_better
        label = f"{c.model} / {c.baseline}" if higher else f"{c.baseline} / {c.model}"
        tagged = bool(c.ratio.tag)
        ax.plot(
            c.resolutions, c.ratios, label=label + (f" {c.ratio.tag}" if tagged else ""),
            linewidth=1.4 if tagged else 1.8, markersize=4 if tagged else 5,
            linestyle="-." if tagged else "-" if higher else "--", **style,
        )  # fmt: skip
        sizes += c.resolutions
        if c.ratios_lo:  # the 95 % band of each ratio
            ax.fill_between(
                c.resolutions, c.ratios_lo, c.ratios_hi, color=style["color"], alpha=0.15,
                linewidth=0,
            )  # fmt: skip
        if c.crossover_range is not None:  # where the crossing may lie by the bands
            early, late = c.crossover_range
            ax.axvspan(
                early if early is not None else c.resolutions[0],
                late if late is not None else c.resolutions[-1],
                color=style["color"], alpha=0.08, linewidth=0,
            )  # fmt: skip
        if c.crossover_px is not None:
            ax.axvline(c.crossover_px, color=style["color"], linestyle=":", linewidth=1)
            labels.append(
                ax.annotate(
                    f"{c.crossover_px:.0f} px",
                    (c.crossover_px, 0.02),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7,
                    color=style["color"],
                )
            )
    if not sizes:
        empty_panel(ax, "no model / baseline pair measured")
        return []
    ax.axhline(1.0, color="0.3", linewidth=1)
    log_axes(ax, sizes)
    plain_log_ticks(ax)
    first = next(c for c in cross if c.ratios)
    ax.set_ylabel(first.ratio.label.format(model=families(c.model for c in cross)))
    ax.legend(fontsize=8, frameon=False)
    return labels
