"""Scaling figures from result CSVs: throughput, peak memory and GFLOPs against resolution (log
axes, one line per model, OOM/timeout marked) and DiM's throughput over each baseline's, with
the resolution where DiM overtakes it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

FAMILY_COLOURS = {  # one hue per family, darker for bigger models
    "dim": ["#9ecae1", "#4292c6", "#08519c", "#08306b"],
    "dit": ["#fdae6b", "#f16913", "#d94801", "#8c2d04"],
    "uvit": ["#a1d99b", "#41ab5d", "#238b45", "#00441b"],
}
SIZE_ORDER = ["T", "S", "B", "M", "L", "XL", "H"]
# Sizes of comparable parameter count: DiM-H/2 (860M) is compared with DiT-XL/2 and U-ViT-H/2.
SIZE_CLASS = {"T": "T", "S": "S", "B": "B", "M": "B", "L": "L", "XL": "H", "H": "H"}
FAILED_MARK = {"oom": "OOM", "timeout": "timeout", "error": "error"}


def model_family(name: str) -> str:
    if name.startswith("DiM"):
        return "dim"
    if name.startswith("U-ViT"):
        return "uvit"
    if name.startswith("DiT"):
        return "dit"
    return "other"


def model_size(name: str) -> str:
    m = re.search(r"-([A-Z]+)/\d+$", name)
    return m.group(1) if m else ""


def model_style(name: str, all_names: list[str]) -> dict:
    """Colour by family (shade by size), marker by family."""
    fam = model_family(name)
    same = sorted(
        {n for n in all_names if model_family(n) == fam},
        key=lambda n: (SIZE_ORDER.index(model_size(n)) if model_size(n) in SIZE_ORDER else 99, n),
    )
    palette = FAMILY_COLOURS.get(fam, ["#636363", "#252525", "#969696", "#000000"])
    shade = palette[min(len(palette) - 1, same.index(name) + max(0, 3 - len(same)))]
    marker = {"dim": "o", "dit": "s", "uvit": "^"}.get(fam, "D")
    return {"color": shade, "marker": marker}


# kind -> (metric column, ratio label, wording: crossing, always ahead, never ahead)
RATIO_KINDS = {
    "throughput": (
        "imgs_per_s",
        "DiM/baseline throughput",
        ("overtakes {b} at about {x:.0f} px", "is faster than {b} at every resolution ({lo}-{hi}"
         " px)", "is slower than {b} up to {hi} px (no crossover)"),
    ),
    "flops": (
        "gflops",
        "baseline/DiM GFLOPs",
        ("needs fewer GFLOPs than {b} from about {x:.0f} px", "needs fewer GFLOPs than {b} at "
         "every resolution ({lo}-{hi} px)", "needs more GFLOPs than {b} up to {hi} px"),
    ),
}  # fmt: skip


@dataclass
class Crossover:
    """How DiM compares with one baseline across resolution. ``ratios`` > 1 means DiM is
    ahead: its throughput over the baseline's, or the baseline's GFLOPs over DiM's."""

    dim: str
    baseline: str
    resolutions: list[int]
    ratios: list[float]  # where both ran
    crossover_px: float | None  # interpolated resolution where the ratio reaches 1
    note: str = ""  # e.g. the baseline ran out of memory where DiM did not
    kind: str = "throughput"

    def sentence(self) -> str:
        if not self.ratios:
            return f"{self.dim} vs {self.baseline}: no resolution where both ran. {self.note}"
        _, label, (cross, ahead, behind) = RATIO_KINDS[self.kind]
        measured = zip(self.resolutions, self.ratios, strict=True)
        pairs = ", ".join(f"{r}: {q:.2f}x" for r, q in measured)
        lo, hi = self.resolutions[0], self.resolutions[-1]
        fields = dict(b=self.baseline, x=self.crossover_px, lo=lo, hi=hi)
        if self.crossover_px is not None:
            head = f"{self.dim} " + cross.format(**fields)
        elif all(q >= 1 for q in self.ratios):
            head = f"{self.dim} " + ahead.format(**fields)
        elif all(q < 1 for q in self.ratios):
            head = f"{self.dim} " + behind.format(**fields)
        else:
            head = f"{self.dim} vs {self.baseline}: the ratio crosses 1 more than once"
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
    """(DiM, baseline) pairs: every baseline when there is one DiM, else same size class."""
    dims = [m for m in models if model_family(m) == "dim"]
    bases = [m for m in models if model_family(m) in ("dit", "uvit")]
    if len(dims) == 1:
        return [(dims[0], b) for b in bases]
    pairs = []
    for d in dims:
        matched = [b for b in bases if SIZE_CLASS.get(model_size(b)) == model_size(d)]
        pairs += [(d, b) for b in (matched or bases)]
    return pairs


def crossovers(df, kind: str = "throughput") -> list[Crossover]:
    """DiM-over-baseline ratios and crossover resolutions from one group of throughput rows
    (same device, dtype, mode, batch) or of flops rows."""
    metric = RATIO_KINDS[kind][0]
    out = []
    models = sorted(df["model"].unique())
    for dim, base in comparison_pairs(models):
        a = df[df["model"] == dim].set_index("image_size")
        b = df[df["model"] == base].set_index("image_size")
        res, ratios, notes = [], [], []
        for r in sorted(set(a.index) & set(b.index)):
            sa, sb = a.loc[r, "status"], b.loc[r, "status"]
            if sa == "ok" and sb == "ok":
                qa, qb = float(a.loc[r, metric]), float(b.loc[r, metric])
                res.append(int(r))
                ratios.append(qa / qb if kind == "throughput" else qb / qa)
            elif sa == "ok" and sb != "ok":
                notes.append(f"At {r} px {base} gave {sb} and {dim} ran.")
            elif sb == "ok" and sa != "ok":
                notes.append(f"At {r} px {dim} gave {sa} and {base} ran.")
        crossing = _crossing(res, ratios)
        out.append(Crossover(dim, base, res, ratios, crossing, " ".join(notes), kind))
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
    names = sorted({c.dim for c in cross} | {c.baseline for c in cross})
    sizes = []
    for c in cross:
        if not c.ratios:
            continue
        style = model_style(c.baseline, names)
        label = f"{c.dim} / {c.baseline}" if c.kind == "throughput" else f"{c.baseline} / {c.dim}"
        ax.plot(
            c.resolutions, c.ratios, label=label, linewidth=1.8, markersize=5,
            linestyle="-" if c.kind == "throughput" else "--", **style,
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
        _empty(ax, "no DiM / baseline pair measured")
        return
    ax.axhline(1.0, color="0.3", linewidth=1)
    _log_axes(ax, sizes)
    _plain_y_labels(ax)
    throughput = any(c.kind == "throughput" for c in cross)
    ax.set_ylabel("DiM throughput / baseline" if throughput else "baseline GFLOPs / DiM GFLOPs")
    ax.legend(fontsize=8, frameon=False)


def _groups(df) -> dict[tuple, object]:
    """Throughput/memory rows split by (device, dtype, mode, batch)."""
    if df.empty:
        return {}
    keys = ["device", "dtype", "mode", "batch_size"]
    return {tuple(k): g for k, g in df.groupby(keys, sort=True)}


def plot_scaling(results_dir: str | Path, formats: tuple[str, ...] = ("png", "svg")) -> dict:
    """Draw ``scaling*.png/svg`` and ``summary.md`` beside the CSVs in ``results_dir``.

    Returns {"figures": [paths], "crossovers": {group label: [Crossover]}} (throughput groups,
    plus a "GFLOPs, forward" entry when there are flops rows).
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
    tp_all, mem_all = df[df["suite"] == "throughput"], df[df["suite"] == "memory"]
    fl = df[df["suite"] == "flops"]
    if not fl.empty:
        modes = set(fl["mode"])
        fl = fl[fl["mode"] == ("forward" if "forward" in modes else sorted(modes)[0])]
    tp_groups, mem_groups = _groups(tp_all), _groups(mem_all)
    group_keys = sorted(set(tp_groups) | set(mem_groups)) or [None]
    flops_cross = crossovers(fl, kind="flops") if not fl.empty else []
    figures, all_cross = [], {}
    for key in group_keys:
        tp = tp_groups.get(key, tp_all.iloc[0:0])
        mem = mem_groups.get(key, mem_all.iloc[0:0])
        cross = crossovers(tp) if not tp.empty else []
        fig, axes = plt.subplots(2, 2, figsize=(12, 9), constrained_layout=True)
        ax_tp, ax_mem, ax_fl, ax_ratio = axes.ravel()
        if tp.empty:
            _empty(ax_tp, "no throughput rows")
        else:
            _plot_metric(ax_tp, tp, "imgs_per_s", "throughput (images / s)")
        if mem.empty and not tp.empty and tp["peak_mem_mb"].notna().any():
            mem, mem_title = tp, "peak memory (MB), from the throughput runs"
        elif key is not None and str(key[0]).startswith("cuda"):
            mem_title = "peak memory (MB, max allocated)"
        else:
            mem_title = "peak memory (MB, RSS above idle)"
        if mem.empty:
            _empty(ax_mem, "no memory rows")
        else:
            _plot_metric(ax_mem, mem, "peak_mem_mb", mem_title)
        if fl.empty:
            _empty(ax_fl, "no flops rows")
        else:
            _plot_metric(ax_fl, fl, "gflops", "GFLOPs per image (2 per MAC)", per_image=True)
        _plot_ratio(ax_ratio, cross or flops_cross)
        ax_tp.set_title("Throughput")
        ax_mem.set_title("Peak memory")
        ax_fl.set_title(f"Compute ({fl['mode'].iloc[0] if not fl.empty else 'forward'})")
        ax_ratio.set_title("DiM over baselines (>1: DiM ahead)")
        label = _group_label(key) if key else "flops only"
        device_name = _first(tp, mem, column="device_name")
        fig.suptitle(f"dimbench scaling: {label}" + (f" on {device_name}" if device_name else ""))
        stem = "scaling" if len(group_keys) == 1 else "scaling_" + _slug(key)
        for fmt in formats:
            path = results_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=130 if fmt == "png" else None)
            figures.append(path)
        plt.close(fig)
        all_cross[label] = cross
    if flops_cross:
        all_cross[f"GFLOPs, {fl['mode'].iloc[0]}"] = flops_cross
    (results_dir / "summary.md").write_text(summary_markdown(df, all_cross, figures))
    return {"figures": figures, "crossovers": all_cross}


def _first(*frames, column: str) -> str:
    for f in frames:
        if not f.empty and column in f and f[column].notna().any():
            return str(f[column].dropna().iloc[0])
    return ""


def _slug(key: tuple) -> str:
    device, dtype, mode, batch = key
    return re.sub(r"[^a-z0-9_]+", "-", f"{device}_{dtype}_{mode}_b{batch}".lower())


def summary_markdown(df, cross: dict[str, list[Crossover]], figures: list[Path]) -> str:
    """A short human summary of a results folder: what ran where, and the crossovers."""

    def values(frame, column: str) -> str:
        if column not in frame:
            return ""
        return ", ".join(sorted({str(v) for v in frame[column].dropna() if str(v)}))

    lines = ["# dimbench results", ""]
    measured = df[df["device"] != "meta"]
    for suite in ("throughput", "memory", "flops"):
        rows = df[df["suite"] == suite]
        if rows.empty:
            continue
        where = "counted on the meta device" if suite == "flops" else (
            f"measured on {values(rows, 'device_name')} ({values(rows, 'device')}, "
            f"{values(rows, 'threads')} threads, OMP_WAIT_POLICY "
            f"{values(rows, 'omp_wait_policy') or 'unset'})"
        )  # fmt: skip
        lines.append(
            f"- `{suite}.csv`: {len(rows)} rows, {where}; torch {values(rows, 'torch_version')}, "
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
        kind = items[0].kind
        title = "overtakes the baselines" if kind == "throughput" else "needs fewer FLOPs"
        lines += [f"## Where DiM {title} ({label})", ""]
        lines += [f"- {c.sentence()}" for c in items]
        lines.append("")
    return "\n".join(lines)
