"""Where a model overtakes an attention baseline: the ratio of a suite's metric (its declared
``Ratio``) between each model and the baselines of its size, across resolution, and the
resolution where the ratio crosses 1, interpolated in log space."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    (same device, dtype, mode, batch; measurements its key columns tell apart taken one set at
    a time)."""
    return [c for _, rows in split(df, suite.keys) for c in _crossovers(rows, suite)]


def _crossovers(df, suite: Suite) -> list[Crossover]:
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
        found = crossing(res, ratios)
        out.append(Crossover(model, base, res, ratios, found, " ".join(notes), suite.name, ratio))
    return out
