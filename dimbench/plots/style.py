"""How every dimbench figure looks: one palette (a distinct colour and marker per model, the
same model in the same style in every panel), the operator categories' colours, log axes with
plain numbers, titles that fit their figure, labels that do not overlap, and files whose bytes
depend on the data alone (``save_figure``)."""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from dimbench.plots.models import model_family

# matplotlib's tab10: qualitative, every pair at least 27 CIELAB units apart
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
# a cycle of another length than the palette's: (colour, marker) pairs repeat after 60 models
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
CATEGORY_COLOURS = {  # the profile figure's operator categories
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
PNG_DPI = 130
# what each format would otherwise stamp into the file besides the figure (its date, the
# writing software), so that the same data gives the same bytes
SAVE_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {"Software": None}}
SVG_HASH_SALT = "dimbench"  # the seed of the SVG's element ids (random unless fixed)
LABEL_PAD_PT = 2.0  # space kept between labels that would overlap


def model_styles(names: Iterable[str], family: Callable[[str], str] = model_family) -> dict:
    """``{name: {"color", "marker"}}``: a different palette colour and marker for each name (up
    to 10; the pair differs up to 60). ``names`` may repeat (one per row): the name that
    occurs most in each family goes first, by family, then the rest by family and name, so the
    models a folder draws most keep the palette's first colours whatever else it holds."""
    counts = Counter(names)
    ordered = sorted(counts, key=lambda n: (family(n), n))
    leaders: dict[str, str] = {}
    for n in sorted(ordered, key=lambda n: -counts[n]):  # stable: ties keep their order
        leaders.setdefault(family(n), n)
    first = [leaders[f] for f in sorted(leaders)]
    ranked = first + [n for n in ordered if n not in first]
    return {
        n: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}
        for i, n in enumerate(ranked)
    }


def log_axes(ax, sizes, xlabel: str = "image size (px)") -> None:
    """Log x and y; the x ticks at the sizes measured."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({int(s) for s in sizes})
    if ticks:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)


def plain_log_ticks(ax) -> None:
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


def empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def fit_suptitle(fig, text: str, margin: float = 0.98) -> None:
    """The figure's title, wrapped onto more lines where one line would be wider than
    ``margin`` of the figure (a narrow figure cut it off at both edges)."""
    title = fig.suptitle(text)
    renderer = fig.canvas.get_renderer()
    room = margin * fig.bbox.width
    width = title.get_window_extent(renderer).width
    chars = len(text)
    while width > room and chars > 10:
        chars = max(10, int(chars * room / width) - 1)
        title.set_text(textwrap.fill(text, chars))
        width = title.get_window_extent(renderer).width


def stack_labels(fig, labels: list, max_lines: int = 12) -> None:
    """Move annotations (offset in points from their anchor, e.g. a line's foot) until none
    overlaps another or its axes' legend: each, left to right, takes the first free place
    right of its anchor, then left of it, a line higher each time. Run once the rest of the
    figure is drawn; the labels are kept out of the layout and the legends stay where they
    are, so nothing moves after."""
    if not labels:
        return
    for label in labels:
        label.set_in_layout(False)
    fig.draw_without_rendering()  # the final layout: where everything lands
    renderer = fig.canvas.get_renderer()
    pad = LABEL_PAD_PT * fig.dpi / 72
    placed = []
    for ax in dict.fromkeys(label.axes for label in labels):
        legend = ax.get_legend()
        if legend is not None:
            box = legend.get_window_extent(renderer)
            legend.set_loc(tuple(ax.transAxes.inverted().transform((box.x0, box.y0))))
            placed.append(box)
    for label in sorted(labels, key=lambda t: t.get_window_extent(renderer).x0):
        dx, y = label.xyann
        line_pt = label.get_window_extent(renderer).height * 72 / fig.dpi + LABEL_PAD_PT
        for i in range(2 * max_lines):
            right = i % 2 == 0
            label.xyann = (abs(dx) if right else -abs(dx), y + (i // 2) * line_pt)
            label.set_horizontalalignment("left" if right else "right")
            box = label.get_window_extent(renderer)
            if not any(box.padded(pad).overlaps(other) for other in placed):
                break
        placed.append(box)


def save_figure(fig, stem: Path, formats: Iterable[str]) -> list[Path]:
    """``stem.<format>`` for each format; the same figure gives the same bytes every time."""
    import matplotlib

    paths = []
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(
                path, dpi=PNG_DPI if fmt == "png" else None, metadata=SAVE_METADATA.get(fmt)
            )
            paths.append(path)
    return paths
