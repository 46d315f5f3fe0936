"""How the backbones of a comparison are sized against each other (``--match
params|flops|none``): each model's constructor overrides, width, depth, parameters and FLOPs,
and with matching the width of every model after the first scaled until its parameters or
forward FLOPs per image come closest to the first model's (depth stays; heads follow).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dimbench.errors import UsageError
from dimbench.registry import ModelSpec, get_model
from dimbench.train.compare.fairness import fair_start

if TYPE_CHECKING:
    from dimbench.train.compare.config import CompareConfig


@dataclass
class PlannedModel:
    """One backbone of the comparison: registry name, constructor overrides, and its size."""

    name: str
    overrides: dict
    family: str
    width: int
    depth: int
    params: int
    gflops: float  # forward, per image (2 FLOPs per multiply-add)
    train_flops_per_step: int  # forward + backward of one global batch
    match: dict | None = None  # what --match chose, relative to the first model
    start: str | None = None  # the start-up choice added for a fair comparison, and why

    @property
    def label(self) -> str:
        return f"{self.name} (w{self.width}, d{self.depth})"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "label": self.label, "slug": self.slug}


def model_shape(model, spec: ModelSpec) -> tuple[int, int, int]:
    """(width, depth, attention heads or 0) of a built model, from what its spec declares."""
    width = int(getattr(model, spec.width)) if spec.width else 0
    heads = int(getattr(model, spec.heads)) if spec.heads else 0
    return width, int(getattr(model, "depth", 0)), heads


def nearest_heads(width: int, heads: int) -> int:
    """The divisor of ``width`` closest to ``heads`` (the larger one on a tie)."""
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: (abs(d - heads), -d))


def _measure(name: str, image_size: int, downsample: int, overrides: dict, batch: int) -> dict:
    from dimbench.measure import count_flops
    from dimbench.registry import create_model

    try:
        fwd = count_flops(name, image_size, 1, mode="forward", downsample=downsample, **overrides)
        train = count_flops(
            name, image_size, batch, mode="train", downsample=downsample, **overrides
        )
        model = create_model(name, image_size, device="meta", downsample=downsample, **overrides)
    except ValueError as e:
        raise UsageError(f"{name} with {overrides}: {e}") from None
    spec = get_model(name)
    width, depth, heads = model_shape(model, spec)
    return {
        "family": spec.family_id,
        "width": width,
        "depth": depth,
        "heads": heads,
        "params": int(fwd["params"]),
        "gflops": float(fwd["gflops"]),
        "train_flops": int(train["flops"]),
    }


def _with_width(overrides: dict, spec: ModelSpec, width: int, heads: int) -> dict:
    if spec.width is None:
        raise UsageError(f"--match: {spec.name} does not declare its width (register_model width=)")
    out = {**overrides, spec.width: width}
    if heads and spec.heads:
        out[spec.heads] = nearest_heads(width, heads)
    return out


def _metric_at(name, image_size, downsample, overrides, spec, width, heads, by) -> float:
    from dimbench.measure import count_flops
    from dimbench.registry import create_model

    ov = _with_width(overrides, spec, width, heads)
    if by == "params":
        model = create_model(name, image_size, device="meta", downsample=downsample, **ov)
        return float(sum(p.numel() for p in model.parameters()))
    return float(count_flops(name, image_size, 1, downsample=downsample, **ov)["flops"])


def match_width(
    name: str,
    image_size: int,
    downsample: int,
    overrides: dict,
    spec: ModelSpec,
    heads: int,
    target: float,
    by: str,
    start_width: int,
) -> tuple[int, float]:
    """The width (a multiple the model accepts) whose params or forward FLOPs per image come
    closest to ``target``; returns (width, value). Depth stays; heads follow the width."""
    step = spec.width_multiple
    cache: dict[int, float] = {}

    def value(k: int) -> float:
        if k not in cache:
            cache[k] = _metric_at(
                name, image_size, downsample, overrides, spec, k * step, heads, by
            )
        return cache[k]

    # bracket the target, starting from the configured width: value(lo) < target <= value(hi)
    lo = hi = max(1, round(start_width / step))
    while value(hi) < target:
        lo, hi = hi, hi * 2
        if hi * step > 1 << 15:
            raise UsageError(f"--match {by}: no width of {name} reaches the target {target:.3g}")
    while lo > 1 and value(lo) >= target:
        lo, hi = max(1, lo // 2), lo
    if value(lo) >= target:  # even the narrowest width reaches it
        hi = lo
    while hi - lo > 1:  # smallest k with value >= target lies in (lo, hi]
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if value(mid) < target else (lo, mid)
    # the size is nearly monotone in the width (DiM's skip fusion changes form at 512): look
    # around the bracket for the closest value
    ks = [k for k in range(hi - 2, hi + 3) if k >= 1]
    best = min(ks, key=lambda k: abs(value(k) - target))
    return best * step, value(best)


def plan_models(
    cfg: CompareConfig, in_channels: int, downsample: int, num_classes: int | None
) -> list[PlannedModel]:
    """Each model's constructor overrides and size; with ``--match`` the widths of all but the
    first model are set so that their params or FLOPs per image match the first model's."""
    specs: list[PlannedModel] = []
    for i, name in enumerate(cfg.models):
        spec = get_model(name)
        spec.input_size(cfg.recipe.image_size, downsample)
        overrides = {"in_channels": in_channels, **cfg.arch.get(name, {})}
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        if spec.learn_sigma:
            overrides["learn_sigma"] = False  # epsilon MSE for every model: no sigma output
        overrides, start = fair_start(
            name, spec.family_id, cfg.recipe.image_size, downsample, overrides
        )
        m = _measure(name, cfg.recipe.image_size, downsample, overrides, cfg.recipe.batch_size)
        match = None
        if i > 0 and cfg.match != "none":
            ref = specs[0]
            target = ref.params if cfg.match == "params" else ref.gflops * 1e9
            width, value = match_width(
                name, cfg.recipe.image_size, downsample, overrides, spec, m["heads"], target,
                cfg.match, m["width"],
            )  # fmt: skip
            overrides = _with_width(overrides, spec, width, m["heads"])
            before = m["width"]
            m = _measure(name, cfg.recipe.image_size, downsample, overrides, cfg.recipe.batch_size)
            match = {
                "by": cfg.match,
                "reference": ref.label,
                "target": target,
                "value": value,
                "ratio": value / target,
                "width_from": before,
                "width_to": width,
            }
        specs.append(
            PlannedModel(
                name=name,
                overrides=overrides,
                family=spec.family_id,
                width=m["width"],
                depth=m["depth"],
                params=m["params"],
                gflops=m["gflops"],
                train_flops_per_step=m["train_flops"],
                match=match,
                start=start,
            )
        )
    return specs


def match_summary(specs: list[PlannedModel]) -> list[str]:
    """One line per model: its size and what matching chose."""
    lines = []
    for s in specs:
        line = (
            f"{s.label}: {s.params / 1e6:.2f}M params, {s.gflops:.3f} GFLOPs/image forward, "
            f"{s.train_flops_per_step / 1e9:.1f} GFLOPs per training step"
        )
        if s.match:
            m = s.match
            line += (
                f"; --match {m['by']}: width {m['width_from']} -> {m['width_to']}, "
                f"{(m['ratio'] - 1) * 100:+.1f}% vs {m['reference']}"
            )
        lines.append(line)
    return lines
