"""The training-comparison figure of a ``dimbench train-compare`` folder: held-out loss and
quick-look FID (and SWD) against steps, training wall time and training FLOPs, one line per
label (the mean over seeds, with a band for the 95% t-interval when there are several), in the
palette every figure uses (:func:`dimbench.plots.style.model_styles`: a label is
styled by its model's family). The written summary is :mod:`dimbench.train.compare.summary`.
"""

from __future__ import annotations

from pathlib import Path

from dimbench.plots.models import model_family
from dimbench.plots.style import fit_suptitle, model_styles, plain_log_ticks, save_figure
from dimbench.train.compare.store import CSV_NAME, read_rows
from dimbench.train.compare.summary import as_float, labels_in_order, over_seeds

X_AXES = (
    ("step", "optimisation steps"),
    ("wall_seconds", "training wall time (s)"),
    ("train_flops", "training FLOPs (forward + backward)"),
)


def _flops_unit(largest: float) -> tuple[float, str]:
    """A scale and SI prefix that keep the FLOPs axis numbers readable."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G")):
        if largest >= scale:
            return scale, prefix
    return 1.0, ""


def _counts(rows: list[dict], metric: str) -> str:
    pairs = sorted({(r["n_gen"], r["n_ref"]) for r in rows if r.get(metric)})
    return ", ".join(f"n_gen={g}, n_ref={n}" for g, n in pairs)


def _legend_title(rows: list[dict]) -> str:
    seeds = len({r.get("seed") for r in rows})
    if seeds < 2:
        return "dotted: raw weights"
    return f"mean of {seeds} seeds, band: 95% CI; dotted: raw weights"


def plot_train_compare(
    out_dir: str | Path, formats: tuple[str, ...] = ("png", "svg"), rows: list[dict] | None = None
) -> list[Path]:
    """Draw ``train_compare.png/svg`` in ``out_dir`` from its CSV (or ``rows``); returns the
    files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if rows is None:
        path = out_dir / CSV_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CSV_NAME} in {out_dir}")
        rows = read_rows(path)
    fig = train_compare_figure(rows)
    files = save_figure(fig, out_dir / "train_compare", formats)
    plt.close(fig)
    return files


def train_compare_figure(rows: list[dict]):
    """The figure of a comparison's rows; the caller closes it."""
    import matplotlib.pyplot as plt

    labels = labels_in_order(rows)
    model_of = {r["label"]: r["model"] for r in rows}
    styles = model_styles(labels, family=lambda label: model_family(model_of[label]))
    metrics = [("heldout_loss", "held-out loss (EMA weights)")]
    if any(r.get("fid") for r in rows):
        metrics.append(("fid", f"FID ({_counts(rows, 'fid')})"))
    if any(r.get("swd") for r in rows):
        metrics.append(("swd", f"SWD x1e3 ({_counts(rows, 'swd')})"))
    fig, axes = plt.subplots(
        len(metrics), len(X_AXES), figsize=(5 * len(X_AXES), 3.6 * len(metrics)),
        squeeze=False, sharex="col", constrained_layout=True,
    )  # fmt: skip
    flops_max = max((as_float(r["train_flops"]) for r in rows), default=1.0)
    for i, (metric, ylabel) in enumerate(metrics):
        for j, (x, xlabel) in enumerate(X_AXES):
            ax = axes[i][j]
            scale = 1.0
            if x == "train_flops":
                scale, prefix = _flops_unit(flops_max)
                xlabel = xlabel.replace("FLOPs", f"{prefix}FLOPs")
            for label in labels:
                style = styles[label]
                xs, ys = over_seeds(rows, label, x, metric)
                xs = [v / scale for v in xs]
                ax.plot(xs, [iv.mean for iv in ys], label=label, linewidth=1.8, markersize=4,
                        **style)  # fmt: skip
                if any(iv.n > 1 for iv in ys):  # the 95% CI over seeds
                    lo, hi = [iv.lo for iv in ys], [iv.hi for iv in ys]
                    ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
                if metric == "heldout_loss":
                    xr, yr = over_seeds(rows, label, x, "heldout_loss_raw")
                    xr = [v / scale for v in xr]
                    ax.plot(xr, [iv.mean for iv in yr], color=style["color"], linewidth=1,
                            linestyle=":", alpha=0.8)  # fmt: skip
            if metric == "heldout_loss":
                ax.set_yscale("log")
                plain_log_ticks(ax)
            ax.grid(True, which="major", alpha=0.3)
            ax.grid(True, which="minor", alpha=0.1)
            if i == len(metrics) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, frameon=False, title=_legend_title(rows),
                          title_fontsize=7)  # fmt: skip
    device = next((r["device_name"] for r in rows if r.get("device_name")), "")
    budget = next((r["budget"] for r in rows if r.get("budget")), "")
    fit_suptitle(fig, f"dimbench train-compare: {budget}" + (f" on {device}" if device else ""))
    return fig
