"""Scaling figures from result CSVs: every registered suite's panels against resolution (log
axes, one line per model, OOM/timeout marked: throughput, peak memory and GFLOPs for the
built-in suites), and each model's standing against the attention baselines, with the
resolution where it overtakes them. What is drawn comes from the suites' and models'
declarations (``dimbench.bench.spec.Panel`` / ``Ratio``, ``register_model``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from dimbench.bench.registry import all_suites
from dimbench.bench.spec import Panel, Ratio, Suite
from dimbench.registry import UnknownModelError, get_model

FAMILY_COLOURS = {  # one hue per family, darker for bigger models
    "DiM": ["#9ecae1", "#4292c6", "#08519c", "#08306b"],
    "DiT": ["#fdae6b", "#f16913", "#d94801", "#8c2d04"],
    "U-ViT": ["#a1d99b", "#41ab5d", "#238b45", "#00441b"],
}
OTHER_COLOURS = [  # families that bring no colours of their own, in order of appearance
    ["#bcbddc", "#807dba", "#6a51a3", "#3f007d"],
    ["#fa9fb5", "#dd3497", "#ae017e", "#7a0177"],
    ["#d9d9d9", "#969696", "#636363", "#252525"],
]
FAMILY_MARKERS = {"DiM": "o", "DiT": "s", "U-ViT": "^"}
SIZE_ORDER = ["T", "S", "B", "M", "L", "XL", "H"]
# Sizes of comparable parameter count: DiM-H/2 (860M) is compared with DiT-XL/2 and U-ViT-H/2.
SIZE_CLASS = {"T": "T", "S": "S", "B": "B", "M": "B", "L": "L", "XL": "H", "H": "H"}
FAILED_MARK = {"oom": "OOM", "timeout": "timeout", "error": "error"}
PREDICTED = "predicted_"  # a panel metric "predicted_<m>" is drawn over the panel of <m>
PREDICT_SUITE = "predict"
UNREGISTERED = "other"  # rows of a model no module registers any more


def model_family(name: str) -> str:
    """The family a model registered with (its plot label and colour)."""
    try:
        return get_model(name).family
    except UnknownModelError:
        return UNREGISTERED


def is_baseline(name: str) -> bool:
    try:
        return get_model(name).baseline
    except UnknownModelError:
        return False


def model_size(name: str) -> str:
    m = re.search(r"-([A-Z]+)/\d+", name)
    return m.group(1) if m else ""


def _palette(family: str, all_families: list[str]) -> list[str]:
    if family in FAMILY_COLOURS:
        return FAMILY_COLOURS[family]
    others = [f for f in all_families if f not in FAMILY_COLOURS]
    return OTHER_COLOURS[others.index(family) % len(OTHER_COLOURS)]


def model_style(name: str, all_names: list[str]) -> dict:
    """Colour by family (shade by size), marker by family."""
    fam = model_family(name)
    families = sorted({model_family(n) for n in all_names})
    same = sorted(
        {n for n in all_names if model_family(n) == fam},
        key=lambda n: (SIZE_ORDER.index(model_size(n)) if model_size(n) in SIZE_ORDER else 99, n),
    )
    palette = _palette(fam, families)
    shade = palette[min(len(palette) - 1, same.index(name) + max(0, 3 - len(same)))]
    return {"color": shade, "marker": FAMILY_MARKERS.get(fam, "D")}


@dataclass
class Crossover:
    """How a model compares with one attention baseline across resolution on a suite's metric.
    ``ratios`` > 1 means the model is ahead (``Ratio.higher_is_better`` says which way)."""

    model: str
    baseline: str
    resolutions: list[int]
    ratios: list[float]  # where both ran
    crossover_px: float | None  # interpolated resolution where the ratio reaches 1
    note: str = ""  # e.g. the baseline ran out of memory where the model did not
    kind: str = "throughput"  # the suite whose rows gave it
    ratio: Ratio | None = None

    def sentence(self) -> str:
        if not self.ratios:
            return f"{self.model} vs {self.baseline}: no resolution where both ran. {self.note}"
        r = self.ratio
        label = r.label.format(model=model_family(self.model))
        measured = zip(self.resolutions, self.ratios, strict=True)
        pairs = ", ".join(f"{res}: {q:.2f}x" for res, q in measured)
        lo, hi = self.resolutions[0], self.resolutions[-1]
        span = f"{lo} px" if lo == hi else f"{lo}-{hi} px"
        fields = dict(b=self.baseline, x=self.crossover_px, lo=lo, hi=hi, span=span)
        if self.crossover_px is not None:
            head = f"{self.model} " + r.crossing.format(**fields)
        elif all(q >= 1 for q in self.ratios):
            head = f"{self.model} " + r.ahead.format(**fields)
        elif all(q < 1 for q in self.ratios):
            head = f"{self.model} " + r.behind.format(**fields)
        else:
            head = f"{self.model} vs {self.baseline}: the ratio crosses 1 more than once"
        return f"{head} ({label}: {pairs}).{' ' + self.note if self.note else ''}"


def _crossing(res: list[int], ratios: list[float]) -> float | None:
    """The last upward crossing of ratio 1, interpolated linearly in log(res) vs log(ratio);
    None when the ratio starts above 1 or never reaches it."""
    if not ratios or ratios[0] >= 1 or ratios[-1] < 1:
        return None
    for i in range(len(ratios) - 1, 0, -1):
        q0, q1 = ratios[i - 1], ratios[i]
        if q0 < 1 <= q1:
            x0, x1 = math.log(res[i - 1]), math.log(res[i])
            y0, y1 = math.log(q0), math.log(q1)
            return math.exp(x0 + (x1 - x0) * (-y0) / (y1 - y0))
    return None


def comparison_pairs(models: list[str]) -> list[tuple[str, str]]:
    """(model, baseline) pairs: every baseline when there is one model that is not a baseline,
    else the baselines of the same size class."""
    candidates = [m for m in models if not is_baseline(m)]
    bases = [m for m in models if is_baseline(m)]
    if len(candidates) == 1:
        return [(candidates[0], b) for b in bases]
    pairs = []
    for d in candidates:
        matched = [b for b in bases if SIZE_CLASS.get(model_size(b)) == model_size(d)]
        pairs += [(d, b) for b in (matched or bases)]
    return pairs


def crossovers(df, suite: Suite) -> list[Crossover]:
    """Model-over-baseline ratios and crossover resolutions from one group of ``suite``'s rows
    (same device, dtype, mode, batch)."""
    ratio = suite.ratio
    out = []
    models = sorted(df["model"].unique())
    for model, base in comparison_pairs(models):
        a = df[df["model"] == model].set_index("image_size")
        b = df[df["model"] == base].set_index("image_size")
        res, ratios, notes = [], [], []
        for r in sorted(set(a.index) & set(b.index)):
            sa, sb = a.loc[r, "status"], b.loc[r, "status"]
            if sa == "ok" and sb == "ok":
                qa, qb = float(a.loc[r, ratio.metric]), float(b.loc[r, ratio.metric])
                res.append(int(r))
                ratios.append(qa / qb if ratio.higher_is_better else qb / qa)
            elif sa == "ok" and sb != "ok":
                notes.append(f"At {r} px {base} gave {sb} and {model} ran.")
            elif sb == "ok" and sa != "ok":
                notes.append(f"At {r} px {model} gave {sa} and {base} ran.")
        crossing = _crossing(res, ratios)
        out.append(
            Crossover(model, base, res, ratios, crossing, " ".join(notes), suite.name, ratio)
        )
    return out


def _group_label(key: tuple) -> str:
    device, dtype, mode, batch = key
    return f"{device}, {dtype}, {mode}, batch {batch}"


def _plot_metric(ax, df, metric: str, ylabel: str, per_image: bool = False) -> None:
    import matplotlib.transforms as mtransforms

    names = sorted(df["model"].unique(), key=lambda n: (model_family(n), n))
    top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for name in names:
        rows = df[df["model"] == name].sort_values("image_size")
        style = model_style(name, list(names))
        ok = rows[rows["status"] == "ok"]
        y = ok[metric].astype(float)
        if per_image:
            y = y / ok["batch_size"].astype(float)
        ax.plot(ok["image_size"], y, label=name, linewidth=1.8, markersize=5, **style)
        for _, r in rows[rows["status"] != "ok"].iterrows():
            ax.plot(
                r["image_size"], 0.96, transform=top, marker="x", color=style["color"],
                markersize=9, markeredgewidth=2, linestyle="none", clip_on=False,
            )  # fmt: skip
            ax.annotate(
                FAILED_MARK.get(r["status"], r["status"]),
                (r["image_size"], 0.96),
                xycoords=top,
                xytext=(5, -3),
                textcoords="offset points",
                fontsize=7,
                color=style["color"],
            )
    _log_axes(ax, df["image_size"])
    _plain_y_labels(ax)
    ax.set_ylabel(ylabel)
    if names:
        ax.legend(fontsize=8, frameon=False)


def _log_axes(ax, sizes) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({int(s) for s in sizes})
    if ticks:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)
    ax.set_xlabel("image size (px)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def _plain_y_labels(ax) -> None:
    """Plain numbers (0.5, 2, 5,000) on a log y axis, at 1-2-5 steps when it spans up to three
    decades, instead of matplotlib's 5x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 99
    subs = (
        (1.0, 2.0, 3.0, 5.0, 7.0) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    )
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_ratio(ax, cross: list[Crossover]) -> None:
    names = sorted({c.model for c in cross} | {c.baseline for c in cross})
    sizes = []
    for c in cross:
        if not c.ratios:
            continue
        style = model_style(c.baseline, names)
        higher = c.ratio.higher_is_better
        label = f"{c.model} / {c.baseline}" if higher else f"{c.baseline} / {c.model}"
        predicted = c.kind == PREDICT_SUITE
        ax.plot(
            c.resolutions, c.ratios, label=label + (" predicted" if predicted else ""),
            linewidth=1.4 if predicted else 1.8, markersize=4 if predicted else 5,
            linestyle="-." if predicted else "-" if higher else "--", **style,
        )  # fmt: skip
        sizes += c.resolutions
        if c.crossover_px is not None:
            ax.axvline(c.crossover_px, color=style["color"], linestyle=":", linewidth=1)
            ax.annotate(
                f"{c.crossover_px:.0f} px",
                (c.crossover_px, 0.02),
                xycoords=("data", "axes fraction"),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=7,
                color=style["color"],
            )
    if not sizes:
        _empty(ax, "no model / baseline pair measured")
        return
    ax.axhline(1.0, color="0.3", linewidth=1)
    _log_axes(ax, sizes)
    _plain_y_labels(ax)
    first = next(c for c in cross if c.ratios)
    ax.set_ylabel(first.ratio.label.format(model=_families(c.model for c in cross)))
    ax.legend(fontsize=8, frameon=False)


def _families(names) -> str:
    return "/".join(sorted({model_family(n) for n in names}))


GROUP_KEYS = ["device", "dtype", "mode", "batch_size"]


def _groups(df) -> dict[tuple, object]:
    """Rows split by (device, dtype, mode, batch)."""
    if df.empty:
        return {}
    return {tuple(k): g for k, g in df.groupby(GROUP_KEYS, sort=True)}


def _ungrouped_rows(rows):
    """An ungrouped suite's rows (FLOPs: the same on every device), one mode: forward if
    there is one."""
    if rows.empty:
        return rows
    modes = set(rows["mode"])
    return rows[rows["mode"] == ("forward" if "forward" in modes else sorted(modes)[0])]


def _panel_rows(panel: Panel, suite: Suite, rows_of, key) -> tuple[object, str]:
    """The rows a panel draws in the figure of group ``key`` and a note on where they came
    from ("" when from its own suite)."""
    own = rows_of(suite, key)
    if not own.empty:
        return own, ""
    for other in panel.fallback:
        rows = rows_of(other, key)
        if not rows.empty and panel.metric in rows and rows[panel.metric].notna().any():
            return rows, f", from the {other} runs"
    return own, ""


def plot_scaling(results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg")) -> dict:
    """Draw ``scaling*.png/svg`` and ``summary.md`` beside the CSVs in ``results_dir``.

    One figure per (device, dtype, mode, batch) group of the grouped suites' rows: a panel per
    declared suite panel and the model-over-baseline ratio. Returns {"figures": [paths],
    "crossovers": {label: [Crossover]}} (the groups, plus one entry per ungrouped suite with a
    ratio, e.g. "GFLOPs, forward").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dimbench.results import load_results

    results_dir = Path(results_dir)
    df = load_results(results_dir)
    if df.empty:
        raise FileNotFoundError(f"no result CSVs in {results_dir}")
    df["image_size"] = df["image_size"].astype(int)
    df["batch_size"] = df["batch_size"].astype(int)
    with_rows = {s.name: s for s in all_suites() if not df[df["suite"] == s.name].empty}
    # suites drawn here: those with panels or a ratio (the profile suite has a figure of its own)
    suites = {n: s for n, s in with_rows.items() if s.panels or s.ratio}
    by_suite = {name: df[df["suite"] == name] for name in suites}
    ungrouped = {n: _ungrouped_rows(rows) for n, rows in by_suite.items() if not suites[n].grouped}
    grouped = {n: _groups(rows) for n, rows in by_suite.items() if suites[n].grouped}
    group_keys = sorted({k for groups in grouped.values() for k in groups}) or [None]

    def rows_of(suite: Suite | str, key):
        name = suite if isinstance(suite, str) else suite.name
        if name in ungrouped:
            return ungrouped[name]
        return grouped.get(name, {}).get(key, df.iloc[0:0])

    panels = [(suite, panel) for suite in suites.values() for panel in suite.panels]
    # a "predicted_<metric>" panel is drawn (dashed) over the panel of <metric>, if there is one
    metrics = {panel.metric for _, panel in panels}
    overlays = {
        panel.metric.removeprefix(PREDICTED): (suite, panel)
        for suite, panel in panels
        if panel.metric.startswith(PREDICTED) and panel.metric.removeprefix(PREDICTED) in metrics
    }
    panels = [(s, p) for s, p in panels if (s, p) not in overlays.values()]
    side_cross = {
        n: crossovers(rows, suites[n]) for n, rows in ungrouped.items() if suites[n].ratio
    }
    figures, all_cross = [], {}
    for key in group_keys:
        cross, predicted_cross = [], []
        for name, groups in grouped.items():
            if suites[name].ratio and key in groups and not cross:
                cross = crossovers(groups[key], suites[name])
        if PREDICT_SUITE in grouped and key in grouped[PREDICT_SUITE]:
            for _, rows in _by_profile(grouped[PREDICT_SUITE][key]):
                found = crossovers(rows, suites[PREDICT_SUITE])
                if cross and cross[0].kind == PREDICT_SUITE:
                    break  # the group has predictions only: they are its crossovers
                predicted_cross += found
        n = len(panels) + 1
        cols = 2 if n > 1 else 1
        fig, axes = plt.subplots(
            math.ceil(n / cols), cols, figsize=(12, 4.5 * math.ceil(n / cols)),
            constrained_layout=True, squeeze=False,
        )  # fmt: skip
        axes = list(axes.ravel())
        for ax, (suite, panel) in zip(axes, panels, strict=False):
            rows, source = _panel_rows(panel, suite, rows_of, key)
            title = panel.title
            if not suite.grouped and not rows.empty:
                title += f" ({rows['mode'].iloc[0]})"
            overlay = overlays.get(panel.metric)
            predicted = rows_of(overlay[0], key) if overlay else df.iloc[0:0]
            if overlay and not predicted.empty:
                title += " (dashed: predicted)" if not rows.empty else " (predicted)"
            ax.set_title(title)
            if rows.empty and predicted.empty:
                _empty(ax, f"no {suite.name} rows")
                continue
            ylabel = panel.ylabel_for(key[0] if key else None) + source
            if not rows.empty:
                _plot_metric(ax, rows, panel.metric, ylabel, panel.per_image)
            if not predicted.empty:
                _plot_predicted(ax, predicted, overlay[1].metric, ylabel, rows.empty)
        ax_ratio = axes[len(panels)]
        ratio_cross = cross or next(iter(side_cross.values()), [])
        _plot_ratio(ax_ratio, ratio_cross + predicted_cross)
        models = _families(c.model for c in ratio_cross) or "models"
        ax_ratio.set_title(f"{models} over baselines (>1: {models} ahead)")
        for ax in axes[len(panels) + 1 :]:
            ax.set_visible(False)
        label = _group_label(key) if key else "ungrouped rows only"
        device_name = _first(*(rows_of(s, key) for s in suites.values() if s.grouped))
        fig.suptitle(f"dimbench scaling: {label}" + (f" on {device_name}" if device_name else ""))
        stem = "scaling" if len(group_keys) == 1 else "scaling_" + _slug(key)
        for fmt in formats:
            path = results_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=130 if fmt == "png" else None)
            figures.append(path)
        plt.close(fig)
        all_cross[label] = cross
        if predicted_cross:
            all_cross[label + ", predicted"] = predicted_cross
    for name, items in side_cross.items():
        if items:
            all_cross[f"{suites[name].ratio.name}, {ungrouped[name]['mode'].iloc[0]}"] = items
    if "profile" in with_rows:
        from dimbench.plots_profile import plot_profile

        figures += plot_profile(results_dir, formats, df)
    (results_dir / "summary.md").write_text(summary_markdown(df, all_cross, figures, with_rows))
    return {"figures": figures, "crossovers": all_cross}


def _by_profile(rows):
    """Prediction rows split by the device profile that made them."""
    if "device_profile" not in rows or rows["device_profile"].isna().all():
        return [("", rows)]
    return list(rows.groupby("device_profile", sort=True))


def _plot_predicted(ax, rows, metric: str, ylabel: str, alone: bool) -> None:
    """Predicted values as dashed lines in a measured panel (labelled by profile)."""
    groups = _by_profile(rows)
    names = sorted(rows["model"].unique(), key=lambda n: (model_family(n), n))
    for profile, sub in groups:
        for name in names:
            ok = sub[(sub["model"] == name) & (sub["status"] == "ok")].sort_values("image_size")
            if ok.empty:
                continue
            style = model_style(name, list(names))
            tag = f" ({profile})" if len(groups) > 1 and profile else ""
            ax.plot(
                ok["image_size"], ok[metric].astype(float), label=f"{name} predicted{tag}",
                linewidth=1.4, linestyle="--", markersize=4, markerfacecolor="none", **style,
            )  # fmt: skip
    if alone:
        _log_axes(ax, rows["image_size"])
        _plain_y_labels(ax)
        ax.set_ylabel(ylabel)
    else:
        sizes = sorted({int(x) for x in ax.get_xticks()} | {int(s) for s in rows["image_size"]})
        _log_axes(ax, sizes)
        _plain_y_labels(ax)
    ax.legend(fontsize=7, frameon=False)


def _first(*frames, column: str = "device_name") -> str:
    for f in frames:
        if not f.empty and column in f and f[column].notna().any():
            return str(f[column].dropna().iloc[0])
    return ""


def _slug(key: tuple) -> str:
    device, dtype, mode, batch = key
    return re.sub(r"[^a-z0-9_]+", "-", f"{device}_{dtype}_{mode}_b{batch}".lower())


def summary_markdown(
    df, cross: dict[str, list[Crossover]], figures: list[Path], suites: dict[str, Suite]
) -> str:
    """A short human summary of a results folder: what ran where, and the crossovers."""

    def values(frame, column: str) -> str:
        if column not in frame:
            return ""
        return ", ".join(sorted({str(v) for v in frame[column].dropna() if str(v)}))

    lines = ["# dimbench results", ""]
    measured = df[df["device"] != "meta"]
    for name, suite in suites.items():
        rows = df[df["suite"] == name]
        where = "counted on the meta device" if not suite.isolated else (
            f"measured on {values(rows, 'device_name')} ({values(rows, 'device')}, "
            f"{values(rows, 'threads')} threads, OMP_WAIT_POLICY "
            f"{values(rows, 'omp_wait_policy') or 'unset'})"
        )  # fmt: skip
        if name == PREDICT_SUITE:
            where = (
                "predicted by the cost model, nothing run (device profiles: "
                f"{values(rows, 'device_profile')})"
            )
        lines.append(
            f"- `{name}.csv`: {len(rows)} rows, {where}; torch {values(rows, 'torch_version')}, "
            f"dimbench {values(rows, 'git_sha')}, "
            f"{', '.join(sorted({str(t)[:10] for t in rows['timestamp'].dropna()}))}."
        )
    loads = measured["load_avg_1m"].dropna() if "load_avg_1m" in measured else []
    if len(loads):
        lines.append(
            f"- 1-minute load average at the start of each measurement: {loads.min():.1f} to "
            f"{loads.max():.1f} (above the core count: the machine was shared and timings "
            "are slower and noisier than on an idle one)."
        )
    lines.append("")
    for name in sorted({p.stem for p in figures}):
        lines += [f"![{name}]({name}.png)", ""]
    for label, items in cross.items():
        if not items:
            continue
        lines += [
            f"## Where {_families(c.model for c in items)} {items[0].ratio.heading} ({label})"
        ]
        lines.append("")
        lines += [f"- {c.sentence()}" for c in items]
        lines.append("")
    return "\n".join(lines)
