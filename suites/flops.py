"""FLOPs suite: multiply-accumulates and FLOPs of one forward pass (or train step) per
(model, resolution, batch), counted on the meta device by ``dimbench.measure.count_flops``.
Nothing is allocated and nothing runs, so it needs no process of its own and paper-sized models
at 2048 px take well under a second each.
"""

from __future__ import annotations

from dimbench.suites.spec import PAPER_MODELS, Config, Suite


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


SUITE = Suite(
    name="flops",
    help="GMACs / GFLOPs and parameters, counted on the meta device (instant, no compute)",
    measure=measure,
    isolated=False,
    default_models=lambda device: PAPER_MODELS,
    metric="gflops",
    ylabel="GFLOPs per image",
    higher_is_better=False,
)
