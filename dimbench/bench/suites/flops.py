"""FLOPs suite: multiply-accumulates and FLOPs of one forward pass (or train step) per
(model, resolution, batch), counted on the meta device by ``dimbench.measure.count_flops``.
Nothing is allocated and nothing runs, so it needs no process of its own and paper-sized models
at 2048 px take well under a second each.
"""

from __future__ import annotations

from dimbench.bench.registry import register_suite
from dimbench.bench.spec import (
    FLOPS_COLUMNS,
    PAPER_MODELS,
    PARAMS_COLUMN,
    Config,
    Panel,
    Ratio,
    Suite,
    SummaryColumn,
    fmt,
)

COLUMNS = {**FLOPS_COLUMNS, **PARAMS_COLUMN}


def measure(cfg: Config) -> dict:
    from dimbench.measure import count_flops

    counted = count_flops(cfg.model, cfg.image_size, batch_size=cfg.batch_size, mode=cfg.mode)
    metrics = {
        "gmacs": float(counted["gmacs"]),
        "gflops": float(counted["gflops"]),
        "params_m": float(counted.get("params_m", counted["params"] / 1e6)),
    }
    breakdown = counted.get("breakdown")
    raw = {"breakdown": breakdown} if breakdown is not None else None
    return {"metrics": metrics, "raw": raw}


SUITE = register_suite(
    Suite(
        name="flops",
        measure=measure,
        columns=COLUMNS,
        summary=(
            SummaryColumn("gmacs", "GMACs", ".4g"),
            SummaryColumn("gflops", "GFLOPs", ".4g"),
            SummaryColumn("params_m", "params M", ".1f"),
        ),
        row_line=lambda row: (
            f"{fmt(row['gflops'], '.4g')} GFLOPs  {fmt(row['params_m'], '.1f')} M params"
        ),
        panels=(Panel("gflops", "Compute", "GFLOPs per image (2 per MAC)", per_image=True),),
        ratio=Ratio(
            name="GFLOPs",
            metric="gflops",
            higher_is_better=False,
            label="baseline/{model} GFLOPs",
            heading="needs fewer FLOPs",
            crossing="needs fewer GFLOPs than {b} from about {x:.0f} px",
            ahead="needs fewer GFLOPs than {b} at every resolution ({span})",
            behind="needs more GFLOPs than {b} up to {hi} px",
        ),
        isolated=False,
        grouped=False,
        default_models=lambda device: PAPER_MODELS,
    )
)
