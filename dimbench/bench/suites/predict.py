"""Predict suite: latency and peak memory of a configuration from the cost model
(``dimbench.measure.cost_model``), nothing run: the step's operators recorded on fake tensors,
each priced by a device profile (this machine's, from ``dimbench calibrate``, or the file its
``device_profile`` suite option names). ``dimbench predict`` runs it in-process for any profile,
a datasheet one included; ``dimbench plot`` draws its rows as dashed lines beside the
measured throughput, and its crossovers beside the measured ones.

Rows are told apart by ``device_profile`` too, so predictions from several profiles of one
device (a measured one, a datasheet one) live side by side.
"""

from __future__ import annotations

from dimbench.bench.registry import register_suite
from dimbench.bench.spec import (
    PARAMS_COLUMN,
    PREDICTED_PEAK_COLUMN,
    Config,
    Panel,
    Ratio,
    Suite,
    SummaryColumn,
    fmt,
)
from dimbench.bench.suites.flops import COLUMNS as FLOPS_COLUMNS
from dimbench.bench.suites.profile import COLUMNS as PROFILE_COLUMNS
from dimbench.bench.suites.profile import find_device_profile

COLUMNS = {
    "predicted_latency_ms": "cost model: one forward (or train step) of the batch, ms",
    "predicted_imgs_per_s": "batch_size / predicted_latency_ms",
    **PREDICTED_PEAK_COLUMN,
    "roofline_latency_ms": "the device's ceilings alone: sum over operators of max(FLOPs / "
    "peak, bytes / bandwidth), no dispatch cost",
    "device_profile": "the device profile that priced the operators: name (measured | datasheet)",
    "gflops": FLOPS_COLUMNS["gflops"],
    "gbytes": PROFILE_COLUMNS["gbytes"],
    "ops": PROFILE_COLUMNS["ops"],
    **PARAMS_COLUMN,
}


def predict(cfg: Config, cost, recording_device: str = "cpu") -> dict:
    """The result of one configuration priced by ``cost`` (a ``CostModel``): metrics and the
    per-category split (raw)."""
    from dimbench.measure.cost_model import predict_stream
    from dimbench.measure.op_recorder import record_step

    stream = record_step(
        cfg.model, cfg.image_size, cfg.batch_size, cfg.dtype, cfg.mode, recording_device,
        cfg.backend_kwargs() if recording_device.split(":")[0] == cfg.device.split(":")[0]
        else None,
    )  # fmt: skip
    p = predict_stream(stream, cost)
    metrics = {
        "predicted_latency_ms": p.latency_ms,
        "predicted_imgs_per_s": cfg.batch_size / (p.latency_ms / 1e3),
        "predicted_peak_mem_mb": p.peak_bytes / 1e6,
        "roofline_latency_ms": p.roofline_ms,
        "device_profile": cost.device_profile.label,
        "gflops": p.flops / 1e9,
        "gbytes": p.bytes / 1e9,
        "ops": p.ops,
    }
    return {"metrics": metrics, "raw": {"prediction": p.to_dict()}}


def measure(cfg: Config) -> dict:
    """``dimbench run predict``: this machine's profile for the configuration's device."""
    from dimbench.errors import UsageError
    from dimbench.measure import device_profile as dp
    from dimbench.measure.cost_model import CostModel

    profile = find_device_profile(cfg)
    if profile is None:
        raise UsageError(
            f"no device profile for {cfg.device} on this machine ({dp.default_path(cfg.device)});"
            " run `dimbench calibrate` first"
        )
    return predict(cfg, CostModel(profile), cfg.device)


def row_line(row: dict) -> str:
    return (
        f"predicted {fmt(row['predicted_latency_ms'], '.1f')} ms "
        f"({fmt(row['predicted_imgs_per_s'], '.3g')} img/s), peak "
        f"{fmt(row['predicted_peak_mem_mb'], '.0f')} MB  [{row.get('device_profile')}]"
    )


SUITE = register_suite(
    Suite(
        name="predict",
        measure=measure,
        columns=COLUMNS,
        summary=(
            SummaryColumn("predicted_latency_ms", "predicted ms", ".1f"),
            SummaryColumn("predicted_imgs_per_s", "predicted img/s", ".3g"),
            SummaryColumn("predicted_peak_mem_mb", "predicted peak MB", ".0f"),
            SummaryColumn("roofline_latency_ms", "roofline ms", ".3g"),
        ),
        row_line=row_line,
        # drawn over the throughput panel (dashed) where the figure has that panel
        panels=(
            Panel(
                "predicted_imgs_per_s",
                "Throughput (predicted)",
                "throughput (images / s)",
                over="imgs_per_s",
                tag="predicted",
            ),
        ),
        ratio=Ratio(
            name="predicted throughput",
            metric="predicted_imgs_per_s",
            higher_is_better=True,
            label="{model}/baseline predicted throughput",
            heading="is predicted to overtake the baselines",
            crossing="is predicted to overtake {b} at about {x:.0f} px",
            ahead="is predicted faster than {b} at every resolution ({span})",
            behind="is predicted slower than {b} up to {hi} px (no crossover)",
            tag="predicted",
        ),
        keys=("device_profile",),
        provenance="predicted by the cost model, nothing run (device profiles: {device_profile})",
    )
)
