"""Training-comparison figures and summary from a ``dimbench train-compare`` folder: held-out
loss and quick-look FID (and SWD) against steps, training wall time and training FLOPs, one
line per model, in the scaling plots' colours (:func:`dimbench.plots.model_style`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dimbench.plots import _plain_y_labels, model_style

CSV_NAME = "train_compare.csv"
X_AXES = (
    ("step", "optimisation steps"),
    ("wall_seconds", "training wall time (s)"),
    ("train_flops", "training FLOPs (forward + backward)"),
)


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _series(rows: list[dict], label: str, x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [
        (_float(r[x]), _float(r[y]))
        for r in rows
        if r["label"] == label and not math.isnan(_float(r.get(y)))
    ]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def _labels(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["label"], None)
    return list(seen)


def _flops_unit(largest: float) -> tuple[float, str]:
    """A scale and SI prefix that keep the FLOPs axis numbers readable."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G")):
        if largest >= scale:
            return scale, prefix
    return 1.0, ""


def _counts(rows: list[dict], metric: str) -> str:
    pairs = sorted({(r["n_gen"], r["n_ref"]) for r in rows if r.get(metric)})
    return ", ".join(f"n_gen={g}, n_ref={n}" for g, n in pairs)


def plot_train_compare(
    out_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), rows: list[dict] | None = None
) -> list[Path]:
    """Draw ``train_compare.png/svg`` in ``out_dir`` from its CSV; returns the files."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if rows is None:
        path = out_dir / CSV_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CSV_NAME} in {out_dir}")
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    labels = _labels(rows)
    metrics = [("heldout_loss", "held-out loss (EMA weights)")]
    if any(r.get("fid") for r in rows):
        metrics.append(("fid", f"FID ({_counts(rows, 'fid')})"))
    if any(r.get("swd") for r in rows):
        metrics.append(("swd", f"SWD x1e3 ({_counts(rows, 'swd')})"))
    fig, axes = plt.subplots(
        len(metrics), len(X_AXES), figsize=(5 * len(X_AXES), 3.6 * len(metrics)),
        squeeze=False, sharex="col", constrained_layout=True,
    )  # fmt: skip
    flops_max = max((_float(r["train_flops"]) for r in rows), default=1.0)
    for i, (metric, ylabel) in enumerate(metrics):
        for j, (x, xlabel) in enumerate(X_AXES):
            ax = axes[i][j]
            scale = 1.0
            if x == "train_flops":
                scale, prefix = _flops_unit(flops_max)
                xlabel = xlabel.replace("FLOPs", f"{prefix}FLOPs")
            for label in labels:
                style = model_style(label, labels)
                xs, ys = _series(rows, label, x, metric)
                xs = [v / scale for v in xs]
                ax.plot(xs, ys, label=label, linewidth=1.8, markersize=4, **style)
                if metric == "heldout_loss":
                    xr, yr = _series(rows, label, x, "heldout_loss_raw")
                    xr = [v / scale for v in xr]
                    ax.plot(xr, yr, color=style["color"], linewidth=1, linestyle=":", alpha=0.8)
            if metric == "heldout_loss":
                ax.set_yscale("log")
                _plain_y_labels(ax)
            ax.grid(True, which="major", alpha=0.3)
            ax.grid(True, which="minor", alpha=0.1)
            if i == len(metrics) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, frameon=False, title="dotted: raw weights",
                          title_fontsize=7)  # fmt: skip
    device = next((r["device_name"] for r in rows if r.get("device_name")), "")
    budget = next((r["budget"] for r in rows if r.get("budget")), "")
    fig.suptitle(f"dimbench train-compare: {budget}" + (f" on {device}" if device else ""))
    files = []
    for fmt in formats:
        path = out_dir / f"train_compare.{fmt}"
        fig.savefig(path, dpi=130 if fmt == "png" else None)
        files.append(path)
    plt.close(fig)
    return files


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation of y at x inside the measured range (nan outside)."""
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1] if xs and x == xs[-1] else math.nan


def equal_flops(rows: list[dict]) -> dict:
    """Each model at the largest training-FLOPs count every model reached (held-out loss,
    interpolated between evaluation points), and at the last point where every model has a
    FID / SWD row (the same fraction of the budget; its FLOPs are listed)."""
    labels = _labels(rows)
    common = min(max(_series(rows, lab, "train_flops", "heldout_loss")[0]) for lab in labels)
    out: dict = {"train_flops": common, "models": {lab: {} for lab in labels}}
    for lab in labels:
        xs, ys = _series(rows, lab, "train_flops", "heldout_loss")
        out["models"][lab]["heldout_loss"] = _interp(xs, ys, common)
    for metric in ("fid", "swd"):
        points = [
            {int(r["point"]) for r in rows if r["label"] == lab and r.get(metric)} for lab in labels
        ]
        shared = set.intersection(*points) if points else set()
        if not shared:
            continue
        k = max(shared)
        for r in rows:
            if r["label"] in out["models"] and int(r["point"]) == k and r.get(metric):
                out["models"][r["label"]] |= {
                    metric: _float(r[metric]),
                    f"{metric}_flops": _float(r["train_flops"]),
                    f"{metric}_n": f"{r['n_gen']}/{r['n_ref']}",
                }
    return out


def summary_markdown(rows: list[dict], meta_path: str | Path | None = None) -> str:
    """The end-of-budget table and the equal-FLOPs comparison, as Markdown."""
    meta = {}
    if meta_path and Path(meta_path).is_file():
        meta = json.loads(Path(meta_path).read_text())
    plan = meta.get("plan", {})
    labels = _labels(rows)
    lines = ["# train-compare", ""]
    if plan:
        rec = plan.get("recipe", {})
        lines += [
            f"- budget {plan['budget']['text']} ({plan['budget']['unit']}), data "
            f"{plan['data']} at {plan['image_size']} px, batch {plan['batch_size']}, seed "
            f"{plan['seed']}, --match {plan['match']}; epsilon MSE on the "
            f"{plan['objective']['schedule']} schedule; AdamW lr {rec.get('lr')}, warm-up "
            f"{meta.get('warmup')}, EMA {rec.get('ema_decay')}.",
        ]
        lines += [f"- {m}" for m in meta.get("matching", [])]
        held = meta.get("heldout", {})
        if held:
            lines.append(
                f"- held-out: {held['description']} x {len(held['timesteps'])} timesteps "
                f"{held['timesteps']}, fixed noise; {held['weights']}."
            )
        q = meta.get("quality") or {}
        if q.get("metrics"):
            lines.append(
                f"- quality: {', '.join(q['metrics'])} on {q['n_gen']} samples vs {q['n_ref']} "
                f"reference images ({q['sampler']}, {q['sample_steps']} steps, {q['guidance']}, "
                f"{q['weights']} weights); biased at these counts, compare only at equal counts."
            )
        runs = meta.get("runs", [])
        if runs:
            lines.append(
                f"- ran on {runs[-1].get('device_name')} ({runs[-1].get('threads')} threads), "
                f"dimbench {runs[-1].get('git_sha')}: `{runs[-1].get('command')}`."
            )
        lines.append("")
    lines += [
        "| model | params | GFLOPs/img | steps | train FLOPs | train s | train loss | "
        "held-out (EMA) | held-out (raw) | FID (n_gen/n_ref) | SWD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lab in labels:
        mine = [r for r in rows if r["label"] == lab]
        r = max(mine, key=lambda r: int(r["point"]))
        fid = next((x for x in reversed(mine) if x.get("fid")), None)
        swd = next((x for x in reversed(mine) if x.get("swd")), None)
        fid_text = f"{_float(fid['fid']):.1f} ({fid['n_gen']}/{fid['n_ref']})" if fid else "-"
        swd_text = f"{_float(swd['swd']):.1f}" if swd else "-"
        lines.append(
            f"| {lab} | {int(r['params']) / 1e6:.2f}M | {_float(r['gflops_per_image']):.3g} | "
            f"{r['step']} | {_float(r['train_flops']):.3g} | {_float(r['wall_seconds']):.0f} | "
            f"{_float(r['train_loss']):.4f} | {_float(r['heldout_loss']):.4f} | "
            f"{_float(r['heldout_loss_raw']):.4f} | {fid_text} | {swd_text} |"
        )
    eq = equal_flops(rows)
    lines += ["", f"At equal training FLOPs ({eq['train_flops']:.3g}):", ""]
    for metric, name in (("heldout_loss", "held-out loss"), ("fid", "FID"), ("swd", "SWD")):
        ranked = sorted(
            ((v[metric], lab, v) for lab, v in eq["models"].items() if metric in v),
            key=lambda t: t[0],
        )
        if not ranked:
            continue
        parts = []
        for value, lab, v in ranked:
            where = "" if metric == "heldout_loss" else f" ({v[metric + '_flops']:.3g} FLOPs)"
            parts.append(f"{lab} {value:.4g}{where}")
        counts = "" if metric == "heldout_loss" else f", n_gen/n_ref {ranked[0][2][metric + '_n']}"
        lines.append(f"- {name} (lower is better{counts}): " + " < ".join(parts))
    lines += ["", "![train-compare](train_compare.png)", ""]
    return "\n".join(lines)
