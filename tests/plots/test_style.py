"""How every figure looks: the same bytes for the same data, a distinct colour and marker per
model from one palette, crossover labels that do not overlap, titles inside their figure."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from dimbench.plots.style import MARKERS, PALETTE, model_styles, save_figure
from tests.plots.folders import scaling_folder
from tests.rows import SCHEMAS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COMMITTED = Path(__file__).resolve().parents[2] / "results" / "amd-epyc-avx512-2c"
TRAIN_COMPARE = COMMITTED.parent / "amd-epyc-avx2-2c" / "train-compare" / "train_compare.csv"
MIN_DELTA_E = 25  # CIELAB distance: tab10's closest pair is 27.7, two shades of purple 22


def delta_e(a: str, b: str) -> float:
    """CIE76 distance between two colours (sRGB, D65)."""

    def lab(colour: str) -> tuple[float, float, float]:
        rgb = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
               for c in matplotlib.colors.to_rgb(colour)]  # fmt: skip
        x = (0.4124 * rgb[0] + 0.3576 * rgb[1] + 0.1805 * rgb[2]) / 0.95047
        y = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
        z = (0.0193 * rgb[0] + 0.1192 * rgb[1] + 0.9505 * rgb[2]) / 1.08883

        def f(t: float) -> float:
            return t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116

        return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))

    return sum((p - q) ** 2 for p, q in zip(lab(a), lab(b), strict=True)) ** 0.5


def assert_distinct(styles: list[dict]) -> None:
    for s, t in itertools.combinations(styles, 2):
        assert delta_e(s["color"], t["color"]) >= MIN_DELTA_E, (s, t)
        assert s["marker"] != t["marker"], (s, t)


# ----------------------------------------------------------------------------- same bytes


def figure():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([1, 2, 3], [2, 1, 3], marker="o", label="a")
    ax.set_title("the same figure")
    ax.legend()
    return fig


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_the_same_figure_is_the_same_bytes(fmt, tmp_path):
    """No date and no random ids in the file: redrawing unchanged data leaves git clean."""
    first, second = (save_figure(figure(), tmp_path / name, [fmt])[0] for name in ("a", "b"))
    plt.close("all")
    assert first.read_bytes() == second.read_bytes()


def test_plotting_a_folder_twice_gives_the_same_files(tmp_path):
    from dimbench.plots.folder import plot_results

    scaling_folder(tmp_path)
    first = {p.name: p.read_bytes() for p in plot_results(tmp_path)["figures"]}
    second = {p.name: p.read_bytes() for p in plot_results(tmp_path)["figures"]}
    assert set(first) == {"scaling.png", "scaling.svg"} and first == second


# ----------------------------------------------------------------------------- one palette


@pytest.mark.parametrize("n", range(1, len(PALETTE) + 1))
def test_every_model_gets_its_own_colour_and_marker(n):
    one_family = [f"DiM-{size}/2" for size in "ABCDEFGHIJ"[:n]]
    assert_distinct(list(model_styles(one_family).values()))
    unregistered = [f"Net{i}-T/2" for i in range(n)]  # all of family "other"
    assert_distinct(list(model_styles(unregistered).values()))
    mixed = ["DiM-S/2", "DiT-S/2", "U-ViT-S/2", "DiM-H/2", "DiT-XL/2", "U-ViT-H/2", "DiM-L/2"]
    assert_distinct(list(model_styles(mixed[:n]).values()))


def test_styles_stay_apart_beyond_the_palette():
    styles = model_styles([f"Net{i}-T/2" for i in range(len(PALETTE) * len(MARKERS) // 2)])
    pairs = [(s["color"], s["marker"]) for s in styles.values()]
    assert len(set(pairs)) == len(pairs)


def test_the_model_a_folder_draws_most_leads_its_family():
    """DiM-S/2 with many rows keeps the first colour even beside a DiM-H/2 with a few."""
    styles = model_styles(["DiM-H/2", "DiM-S/2", "DiM-S/2", "DiT-S/2", "DiT-S/2", "U-ViT-S/2"])
    assert [styles[m]["color"] for m in ("DiM-S/2", "DiT-S/2", "U-ViT-S/2")] == list(PALETTE[:3])
    assert styles["DiM-H/2"]["color"] == PALETTE[3]


def drawn_styles(ax) -> dict[str, dict]:
    handles, labels = ax.get_legend_handles_labels()
    return {
        label: {"color": matplotlib.colors.to_hex(h.get_color()), "marker": h.get_marker()}
        for h, label in zip(handles, labels, strict=True)
    }


def test_train_compare_draws_each_model_apart():
    """Its labels ("DiM-S/2 (w160, d9)") are not model names: they take their model's family,
    and three models are three palette colours and three markers (not three purples)."""
    from dimbench.plots.training import train_compare_figure
    from dimbench.train.compare.store import read_rows

    rows = read_rows(TRAIN_COMPARE)
    fig = train_compare_figure(rows)
    styles = drawn_styles(fig.axes[0])
    plt.close(fig)
    assert len(styles) == 3
    assert_distinct(list(styles.values()))
    dim = next(label for label in styles if label.startswith("DiM"))
    assert styles[dim]["color"] == PALETTE[0]


def test_a_scaling_figure_draws_each_model_in_one_style_everywhere(tmp_path):
    from dimbench.bench import all_suites
    from dimbench.plots.scaling import scaling_figures
    from dimbench.results import load_results

    scaling_folder(tmp_path)
    df = load_results(tmp_path, SCHEMAS)
    (drawn,) = scaling_figures(df, all_suites())
    per_panel = [drawn_styles(ax) for ax in drawn.figure.axes[:3]]  # throughput, memory, flops
    plt.close(drawn.figure)
    assert_distinct(list(per_panel[0].values()))
    for panel in per_panel[1:]:
        assert all(panel[m] == per_panel[0][m] for m in panel)


# ----------------------------------------------------------------------------- labels, titles


def close_crossovers(tmp_path) -> None:
    """DiM overtakes DiT at about 529 px and U-ViT at about 554 px: the two crossover labels
    would be drawn on top of each other."""
    ips = {
        "DiM-T/2": {256: 4.0, 512: 2.0, 1024: 1.5, 1536: 1.2},
        "DiT-T/2": {256: 8.0, 512: 2.0 / 0.98, 1024: 1.0, 1536: 0.5},
        "U-ViT-T/2": {256: 8.0, 512: 2.0 / 0.95, 1024: 1.0, 1536: 0.5},
    }
    scaling_folder(tmp_path, ips)


def test_crossover_labels_never_overlap(tmp_path):
    from dimbench.bench import all_suites
    from dimbench.plots.scaling import scaling_figures
    from dimbench.results import load_results

    close_crossovers(tmp_path)
    (drawn,) = scaling_figures(load_results(tmp_path, SCHEMAS), all_suites())
    found = sorted(c.crossover_px for c in drawn.crossovers if c.crossover_px)
    assert len(found) == 2 and found[1] - found[0] < 40  # close enough to collide
    fig = drawn.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ratio = fig.axes[3]
    labels = [t for t in ratio.texts if t.get_text().endswith(" px")]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert len(boxes) == 2
    assert not boxes[0].overlaps(boxes[1])
    legend = ratio.get_legend().get_window_extent(renderer)
    assert not any(b.overlaps(legend) for b in boxes)
    plt.close(fig)


def test_the_profile_title_fits_a_one_model_figure():
    """One model: the narrowest profile figure; its long title wraps instead of running off
    both edges."""
    from dimbench.plots.profile import profile_figure, profile_groups

    rows = [
        dict(suite="profile", status="ok", scope="model", category=category, model="DiM-S/2",
             image_size=res, time_ms=ms, share=share, device="cpu", dtype="fp32",
             mode="forward", batch_size=1,
             device_name="Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz")
        for res in (256, 512)
        for category, ms, share in (("scan", 10.0, 0.25), ("matmul", 30.0, 0.75))
    ]  # fmt: skip
    ((key, group),) = profile_groups(pd.DataFrame(rows)).items()
    fig = profile_figure(group, key)
    fig.draw_without_rendering()
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1
    assert fig.bbox.y0 <= title.y0 and title.y1 <= fig.bbox.y1
    assert "Xeon" in fig._suptitle.get_text()
    plt.close(fig)


def test_the_scaling_title_fits(tmp_path):
    from dimbench.bench import all_suites
    from dimbench.plots.scaling import scaling_figures
    from dimbench.results import load_results

    scaling_folder(tmp_path)
    (drawn,) = scaling_figures(load_results(tmp_path, SCHEMAS), all_suites())
    fig = drawn.figure
    fig.draw_without_rendering()
    title = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1
    plt.close(fig)
