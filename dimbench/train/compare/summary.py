"""The written summary of a train-compare folder (``summary.md``): the numbers at the end of
the budget and every model at equal training FLOPs, from its CSV rows and
``train_compare.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path


def as_float(v) -> float:
    """A CSV cell as a float (nan when empty)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def series(rows: list[dict], label: str, x: str, y: str) -> tuple[list[float], list[float]]:
    """One model's (x, y) pairs where y is set, sorted by x."""
    pts = [
        (as_float(r[x]), as_float(r[y]))
        for r in rows
        if r["label"] == label and not math.isnan(as_float(r.get(y)))
    ]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def labels_in_order(rows: list[dict]) -> list[str]:
    """The model labels in the order their first rows appear."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["label"], None)
    return list(seen)


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
    labels = labels_in_order(rows)
    common = min(max(series(rows, lab, "train_flops", "heldout_loss")[0]) for lab in labels)
    out: dict = {"train_flops": common, "models": {lab: {} for lab in labels}}
    for lab in labels:
        xs, ys = series(rows, lab, "train_flops", "heldout_loss")
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
                    metric: as_float(r[metric]),
                    f"{metric}_flops": as_float(r["train_flops"]),
                    f"{metric}_n": f"{r['n_gen']}/{r['n_ref']}",
                }
    return out


def summary_markdown(rows: list[dict], meta_path: str | Path | None = None) -> str:
    """The end-of-budget table and the equal-FLOPs comparison, as Markdown."""
    meta = {}
    if meta_path and Path(meta_path).is_file():
        meta = json.loads(Path(meta_path).read_text())
    plan = meta.get("plan", {})
    labels = labels_in_order(rows)
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
        fid_text = f"{as_float(fid['fid']):.1f} ({fid['n_gen']}/{fid['n_ref']})" if fid else "-"
        swd_text = f"{as_float(swd['swd']):.1f}" if swd else "-"
        lines.append(
            f"| {lab} | {int(r['params']) / 1e6:.2f}M | {as_float(r['gflops_per_image']):.3g} | "
            f"{r['step']} | {as_float(r['train_flops']):.3g} | {as_float(r['wall_seconds']):.0f} | "
            f"{as_float(r['train_loss']):.4f} | {as_float(r['heldout_loss']):.4f} | "
            f"{as_float(r['heldout_loss_raw']):.4f} | {fid_text} | {swd_text} |"
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
