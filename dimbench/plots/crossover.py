"""Where a model overtakes an attention baseline: the ratio of a suite's metric (its declared
``Ratio``) between each model and the baselines of its size, across resolution, and the
resolution where the ratio crosses 1, interpolated in log space.

With intervals (95 %): each resolution's ratio band comes from the paired rounds
(``OUT/ratios.csv``, ``bands``) where there are some, else from the two rows' own intervals
(``METRIC_ci_lo``/``_ci_hi``; lo/hi over hi/lo, wider). The crossover is then an interval too:
the upper band reaches 1 first, the lower band last, each on the same log-log interpolation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dimbench.bench.spec import Ratio, Suite
from dimbench.plots.groups import split
from dimbench.plots.models import is_baseline, model_family, model_size

# Sizes of comparable parameter count: DiM-H/2 (860M) is compared with DiT-XL/2 and U-ViT-H/2.
SIZE_CLASS = {"T": "T", "S": "S", "B": "B", "M": "B", "L": "L", "XL": "H", "H": "H"}


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
    # the 95 % band of each ratio (empty: none known), and where the crossing may lie: (the
    # upper band's crossing, the lower band's); None at an end the band leaves open
    ratios_lo: list[float] = field(default_factory=list)
    ratios_hi: list[float] = field(default_factory=list)
    crossover_range: tuple[float | None, float | None] | None = None

    def interval_words(self) -> str:
        """Where the crossing lies by the 95 % bands, e.g. "between 870 and 960 px"."""
        if self.crossover_range is None:
            return ""
        early, late = self.crossover_range
        lo, hi = self.resolutions[0], self.resolutions[-1]
        if early is not None and late is not None:
            return f"between {early:.0f} and {late:.0f} px"
        if late is not None:
            return f"at or below {late:.0f} px (ahead within the interval from {lo} px)"
        if early is not None:
            return f"from {early:.0f} px, or beyond {hi} px (the lower bound stays below 1)"
        return f"somewhere in or beyond {lo}-{hi} px (the intervals do not resolve it)"

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
        if self.crossover_px is not None and self.crossover_range is not None:
            head = (
                f"{self.model} {r.overtakes} {self.baseline} {self.interval_words()} "
                f"(95% interval; point estimate {self.crossover_px:.0f} px)"
            )
        elif self.crossover_px is not None:
            head = f"{self.model} " + r.crossing.format(**fields)
        elif all(q >= 1 for q in self.ratios):
            head = f"{self.model} " + r.ahead.format(**fields)
        elif all(q < 1 for q in self.ratios):
            head = f"{self.model} " + r.behind.format(**fields)
        else:
            head = f"{self.model} vs {self.baseline}: the ratio crosses 1 more than once"
        if self.ratios_lo:
            measured = zip(
                self.resolutions, self.ratios, self.ratios_lo, self.ratios_hi, strict=True
            )
            pairs = ", ".join(f"{res}: {q:.2f}x [{a:.2f}, {b:.2f}]" for res, q, a, b in measured)
            unsure = [
                res
                for res, a, b in zip(self.resolutions, self.ratios_lo, self.ratios_hi, strict=True)
                if a < 1 <= b
            ]
            if unsure and self.crossover_px is None:
                head += f"; the 95% interval includes 1 at {', '.join(map(str, unsure))} px"
        return f"{head} ({label}: {pairs}).{' ' + self.note if self.note else ''}"


def crossing(res: list[int], ratios: list[float]) -> float | None:
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


def crossing_range(
    res: list[int], lo: list[float], hi: list[float]
) -> tuple[float | None, float | None]:
    """(earliest, latest) resolution where the ratio may cross 1 by its band: the upper band's
    crossing and the lower band's (``crossing``), None at an end the band leaves open."""
    early, late = crossing(res, hi), crossing(res, lo)
    if early is not None and late is not None and early > late:
        early, late = late, early
    return early, late


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


Bands = dict[tuple, tuple[float, float, float]]  # (model, baseline, px, batch, dtype, mode,
# device) -> (ratio, lo, hi) of the paired rounds


def paired_bands(ratios) -> Bands:
    """``ratios.csv`` rows (a DataFrame, or None) keyed for ``crossovers``."""
    if ratios is None:
        return {}
    return {
        (r["model"], r["baseline"], int(r["image_size"]), int(r["batch_size"]), str(r["dtype"]),
         str(r["mode"]), str(r["device"])): (float(r["ratio"]), float(r["ratio_ci_lo"]),
                                              float(r["ratio_ci_hi"]))
        for r in ratios.to_dict("records")
    }  # fmt: skip


def crossovers(df, suite: Suite, bands: Bands | None = None) -> list[Crossover]:
    """Model-over-baseline ratios and crossover resolutions from one group of ``suite``'s rows
    (same device, dtype, mode, batch; measurements its key columns tell apart taken one set at
    a time); ``bands``: the paired rounds' ratios of a suite measured in cells."""
    bands = (bands or {}) if suite.stepper else {}
    return [c for _, rows in split(df, suite.keys) for c in _crossovers(rows, suite, bands)]


def _band(a, b, metric: str, higher: bool) -> tuple[float, float] | None:
    """The ratio's band from two rows' own intervals (None where either has none)."""
    try:
        alo, ahi = float(a[f"{metric}_ci_lo"]), float(a[f"{metric}_ci_hi"])
        blo, bhi = float(b[f"{metric}_ci_lo"]), float(b[f"{metric}_ci_hi"])
    except (KeyError, TypeError, ValueError):
        return None
    if any(math.isnan(v) or v <= 0 for v in (alo, ahi, blo, bhi)):
        return None
    return (alo / bhi, ahi / blo) if higher else (blo / ahi, bhi / alo)


def _crossovers(df, suite: Suite, bands: Bands) -> list[Crossover]:
    ratio = suite.ratio
    out = []
    models = sorted(df["model"].unique())
    for model, base in comparison_pairs(models):
        a = df[df["model"] == model].set_index("image_size")
        b = df[df["model"] == base].set_index("image_size")
        res, ratios, los, his, notes = [], [], [], [], []
        for r in sorted(set(a.index) & set(b.index)):
            sa, sb = a.loc[r, "status"], b.loc[r, "status"]
            if sa == "ok" and sb == "ok":
                qa, qb = float(a.loc[r, ratio.metric]), float(b.loc[r, ratio.metric])
                res.append(int(r))
                ratios.append(qa / qb if ratio.higher_is_better else qb / qa)
                row = a.loc[r]
                key = (model, base, int(r), int(row["batch_size"]), str(row["dtype"]),
                       str(row["mode"]), str(row["device"]))  # fmt: skip
                if key in bands:
                    ratios[-1], lo, hi = bands[key]
                    los.append(lo), his.append(hi)
                elif band := _band(a.loc[r], b.loc[r], ratio.metric, ratio.higher_is_better):
                    los.append(band[0]), his.append(band[1])
            elif sa == "ok" and sb != "ok":
                notes.append(f"At {r} px {base} gave {sb} and {model} ran.")
            elif sb == "ok" and sa != "ok":
                notes.append(f"At {r} px {model} gave {sa} and {base} ran.")
        if len(los) != len(res):  # a band for every resolution, or none
            los, his = [], []
        found = crossing(res, ratios)
        span = crossing_range(res, los, his) if los and found is not None else None
        out.append(
            Crossover(
                model, base, res, ratios, found, " ".join(notes), suite.name, ratio, los, his, span
            )  # fmt: skip
        )
    return out


def crossover_lines(df, suite: Suite, results_dir) -> list[str]:
    """The crossover sentences of a sweep's rows, one per (model, baseline) per group, with the
    intervals of ``results_dir/ratios.csv`` where there are some (the end-of-sweep summary)."""
    from dimbench.bench.ratios import read_ratios
    from dimbench.plots.groups import group_label, groups

    if suite.ratio is None or df.empty:
        return []
    df = df.copy()
    df["image_size"] = df["image_size"].astype(int)
    df["batch_size"] = df["batch_size"].astype(int)
    bands = paired_bands(read_ratios(results_dir))
    return [
        f"[{group_label(key)}] {c.sentence()}"
        for key, rows in groups(df).items()
        for c in crossovers(rows, suite, bands)
    ]
