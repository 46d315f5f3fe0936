"""The written summary of a train-compare folder (``summary.md``): the numbers at the end of
the budget and every model at equal training FLOPs, each as the mean over seeds with its 95%
t-interval, and which models a paired t-test across seeds tells apart (p < 0.05), from its CSV
rows and ``train_compare.json``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from dimbench.train.compare.stats import ALPHA, Interval, mean_ci, paired_p
from dimbench.train.compare.store import row_seed


def as_float(v) -> float:
    """A CSV cell as a float (nan when empty)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def series(
    rows: list[dict], label: str, x: str, y: str, seed: int | None = None
) -> tuple[list[float], list[float]]:
    """One model's (x, y) pairs where y is set (of one seed's run if ``seed``), sorted by x."""
    pts = [
        (as_float(r[x]), as_float(r[y]))
        for r in rows
        if r["label"] == label
        and (seed is None or row_seed(r) == seed)
        and not math.isnan(as_float(r.get(y)))
    ]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def labels_in_order(rows: list[dict]) -> list[str]:
    """The model labels in the order their first rows appear."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["label"], None)
    return list(seen)


def seeds_of(rows: list[dict], label: str) -> list[int]:
    return sorted({row_seed(r) for r in rows if r["label"] == label})


def over_seeds(rows: list[dict], label: str, x: str, y: str) -> tuple[list[float], list[Interval]]:
    """Per evaluation point where y is set: the mean x over seeds and y's interval over seeds."""
    points: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if r["label"] == label and not math.isnan(as_float(r.get(y))):
            points.setdefault(int(r["point"]), []).append((as_float(r[x]), as_float(r[y])))
    xs, ys = [], []
    for k in sorted(points):
        xs.append(sum(p[0] for p in points[k]) / len(points[k]))
        ys.append(mean_ci([p[1] for p in points[k]]))
    return xs, ys


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation of y at x inside the measured range (nan outside)."""
    for i in range(len(xs) - 1):
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1] if xs and x == xs[-1] else math.nan


def equal_flops(rows: list[dict]) -> dict:
    """Each model at the largest training-FLOPs count every run reached (held-out loss,
    interpolated between evaluation points, per seed), and at the last point where every run has
    a FID / SWD row (the same fraction of the budget; its FLOPs are listed). Per model and
    metric: ``{metric: Interval, metric + "_by_seed": {seed: value}}``."""
    labels = labels_in_order(rows)
    runs = [(lab, s) for lab in labels for s in seeds_of(rows, lab)]
    common = min(max(series(rows, lab, "train_flops", "heldout_loss", s)[0]) for lab, s in runs)
    out: dict = {"train_flops": common, "models": {lab: {} for lab in labels}}
    for lab in labels:
        by_seed = {}
        for s in seeds_of(rows, lab):
            xs, ys = series(rows, lab, "train_flops", "heldout_loss", s)
            by_seed[s] = _interp(xs, ys, common)
        out["models"][lab] |= {"heldout_loss": mean_ci(list(by_seed.values()))}
        out["models"][lab]["heldout_loss_by_seed"] = by_seed
    for metric in ("fid", "swd"):
        points = [
            {int(r["point"]) for r in rows if (r["label"], row_seed(r)) == run and r.get(metric)}
            for run in runs
        ]
        shared = set.intersection(*points) if points else set()
        if not shared:
            continue
        k = max(shared)
        for lab in labels:
            mine = [r for r in rows if r["label"] == lab and int(r["point"]) == k and r.get(metric)]
            by_seed = {row_seed(r): as_float(r[metric]) for r in mine}
            out["models"][lab] |= {
                metric: mean_ci(list(by_seed.values())),
                f"{metric}_by_seed": by_seed,
                f"{metric}_flops": as_float(mine[0]["train_flops"]),
                f"{metric}_n": f"{mine[0]['n_gen']}/{mine[0]['n_ref']}",
            }
    return out


def _header(meta: dict) -> list[str]:
    plan = meta.get("plan", {})
    if not plan:
        return []
    rec = plan.get("recipe", {})
    seeds = plan.get("seeds", 1)
    lines = [
        f"- budget {plan['budget']['text']} ({plan['budget']['unit']}), data "
        f"{plan['data']} at {plan['image_size']} px, batch {plan['batch_size']}, "
        f"{seeds} seed(s) from {plan['seed']}, --match {plan['match']}; epsilon MSE on the "
        f"{plan['objective']['schedule']} schedule; AdamW lr {rec.get('lr')}, warm-up "
        f"{meta.get('warmup')}, EMA {rec.get('ema_decay')}.",
    ]
    lines += [f"- {m}" for m in meta.get("matching", [])]
    lines += [
        f"- start-up, {m['label']}: {m['start']}." for m in meta.get("models", []) if m.get("start")
    ]
    held = meta.get("heldout", {})
    if held:
        lines.append(
            f"- held-out: {held['description']} x {len(held['timesteps'])} timesteps "
            f"{held['timesteps']}, fixed noise (the same for every model and seed); "
            f"{held.get('labels', 'true labels')}; {held['weights']}."
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
    return [*lines, ""]


def _end_table(rows: list[dict], labels: list[str]) -> list[str]:
    lines = [
        "End of the budget: mean [95% CI] over seeds.",
        "",
        "| model | seeds | params | GFLOPs/img | steps | train FLOPs | train s | train loss | "
        "held-out (EMA) | held-out (raw) | FID (n_gen/n_ref) | SWD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lab in labels:
        mine = [r for r in rows if r["label"] == lab]
        last = max(int(r["point"]) for r in mine)
        end = [r for r in mine if int(r["point"]) == last]
        r = end[0]

        def ci(col: str, fmt: str = ".4f", rs: list[dict] = end) -> str:
            iv = mean_ci([as_float(x[col]) for x in rs])
            return "-" if iv.n == 0 else iv.text(fmt)

        fid_k = max((int(x["point"]) for x in mine if x.get("fid")), default=None)
        fid_rows = [x for x in mine if fid_k is not None and int(x["point"]) == fid_k]
        fid = (
            f"{ci('fid', '.1f', fid_rows)} ({fid_rows[0]['n_gen']}/{fid_rows[0]['n_ref']})"
            if fid_rows
            else "-"
        )
        swd_k = max((int(x["point"]) for x in mine if x.get("swd")), default=None)
        swd_rows = [x for x in mine if swd_k is not None and int(x["point"]) == swd_k]
        lines.append(
            f"| {lab} | {len(end)} | {int(r['params']) / 1e6:.2f}M | "
            f"{as_float(r['gflops_per_image']):.3g} | {r['step']} | "
            f"{as_float(r['train_flops']):.3g} | {ci('wall_seconds', '.0f')} | "
            f"{ci('train_loss')} | {ci('heldout_loss')} | {ci('heldout_loss_raw')} | "
            f"{fid} | {ci('swd', '.1f', swd_rows) if swd_rows else '-'} |"
        )
    return lines


def _point_table(rows: list[dict], labels: list[str]) -> list[str]:
    lines = [
        "",
        "Held-out loss (EMA) at every point, mean [95% CI] over seeds:",
        "",
        "| point | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    cols = {lab: over_seeds(rows, lab, "step", "heldout_loss")[1] for lab in labels}
    for k in range(max(len(c) for c in cols.values())):
        cells = [cols[lab][k].text() if k < len(cols[lab]) else "-" for lab in labels]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _ranking(eq: dict, metric: str, name: str) -> list[str]:
    ranked = sorted(
        ((v[metric], lab, v) for lab, v in eq["models"].items() if metric in v),
        key=lambda t: t[0].mean,
    )
    if not ranked:
        return []
    fmt = ".4f" if metric == "heldout_loss" else ".1f"
    parts = []
    for iv, lab, v in ranked:
        where = "" if metric == "heldout_loss" else f" ({v[metric + '_flops']:.3g} FLOPs)"
        parts.append(f"{lab} {iv.text(fmt)}{where}")
    counts = "" if metric == "heldout_loss" else f", n_gen/n_ref {ranked[0][2][metric + '_n']}"
    n = min(iv.n for iv, _, _ in ranked)
    lines = [f"- {name} (lower is better{counts}; mean [95% CI] over seeds): " + " < ".join(parts)]
    if n < 2:
        lines.append("  - one seed: no interval and no test; which models differ cannot be said.")
        return lines
    for (_, a, va), (_, b, vb) in itertools.combinations(ranked, 2):
        p, k = paired_p(va[metric + "_by_seed"], vb[metric + "_by_seed"])
        verdict = f"{a} is lower" if p < ALPHA else "cannot be told apart at this budget"
        lines.append(f"  - {a} vs {b}: paired t-test over {k} seeds p = {p:.3g}: {verdict}")
    return lines


def summary_markdown(rows: list[dict], meta_path: str | Path | None = None) -> str:
    """The end-of-budget table, the held-out loss per point and the equal-FLOPs comparison
    with its verdicts, as Markdown."""
    meta = {}
    if meta_path and Path(meta_path).is_file():
        meta = json.loads(Path(meta_path).read_text())
    labels = labels_in_order(rows)
    lines = ["# train-compare", "", *_header(meta)]
    lines += _end_table(rows, labels)
    lines += _point_table(rows, labels)
    eq = equal_flops(rows)
    lines += ["", f"At equal training FLOPs ({eq['train_flops']:.3g}):", ""]
    for metric, name in (("heldout_loss", "held-out loss"), ("fid", "FID"), ("swd", "SWD")):
        lines += _ranking(eq, metric, name)
    lines += [
        "",
        f"Two models are told apart when a paired t-test across seeds (the same seed: the same "
        f"data order and noise for both) gives p < {ALPHA:.2f}.",
        "",
        "![train-compare](train_compare.png)",
        "",
    ]
    return "\n".join(lines)
