"""Configurations that cannot fit, refused before their process starts: the step's peak memory
as the cost model predicts it (``op_recorder.record_step`` on fake tensors: parameters, AdamW
state in a train step, and the peak of live operator outputs; nothing is allocated) against the
memory the device has. A refused configuration becomes a row with status ``too_big`` and the
predicted figure (``predicted_peak_mem_mb``) instead of running until the kernel's OOM killer
(or CUDA's allocator) stops it.

What the device has:

- a GPU: its total memory (``get_device_properties``) less 512 MiB for the CUDA context, which
  lives outside the caching allocator whose peak the prediction stands for;
- the CPU: the machine's physical memory (or its cgroup's limit, if lower) less 1 GiB for what
  the prediction leaves out: the measuring process's interpreter and libraries (torch alone is
  ~0.4 GB of RSS), the parent process and the system. Not the memory available now: that moves
  with whatever else runs, and a ``too_big`` row is kept on a rerun, so the verdict must be the
  machine's, not the moment's.

Recording costs by the model's operator count, not its size, so a model that declares its depth
is recorded at two shallow depths and extrapolated (``predicted_peak_bytes``). Peak memory grows
with the resolution, so each (model, batch, dtype, mode, backends) group is checked from its
largest resolution down and stops at the first that fits: one recording per group when
everything fits, one more per refused configuration.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from dimbench.bench.spec import Config
from dimbench.registry import get_model

MARGIN_BYTES = {"cpu": 1 << 30, "cuda": 512 << 20}
MB = 1e6
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


@dataclass(frozen=True)
class Capacity:
    """The bytes a configuration's peak may reach on a device, and how they were found."""

    bytes: int
    source: str  # e.g. "23.5 GB of RAM less 1 GiB"


def device_capacity(device: str) -> Capacity:
    """What a measurement on ``device`` may use (see the module docstring)."""
    if device.startswith("cuda"):
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        margin = MARGIN_BYTES["cuda"]
        what = f"{total / 1e9:.1f} GB on {torch.cuda.get_device_name(device)} less 512 MiB"
    else:
        import psutil

        total = psutil.virtual_memory().total
        limit = _cgroup_limit()
        what = "RAM"
        if limit is not None and limit < total:
            total, what = limit, "the cgroup's memory limit"
        margin = MARGIN_BYTES["cpu"]
        what = f"{total / 1e9:.1f} GB of {what} less 1 GiB"
    return Capacity(max(0, total - margin), what)


def _cgroup_limit() -> int | None:
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def predicted_peak_bytes(cfg: Config) -> int:
    """The cost model's peak memory of one step of ``cfg``, recorded on fake tensors.

    A model that declares its depth keyword (``ModelSpec.depth``) is recorded at the two
    shallowest depths of its depth's parity (2 and 4, or 3 and 5: DiM needs an odd one, U-ViT an
    even one) and extrapolated: parameters, optimizer state and saved activations are the same
    per block, so the peak is linear in depth (within 0.1% of the full recording for DiM, DiT and
    U-ViT, forward and train), and recording costs by operator count."""
    depth = _depth(cfg)
    if depth is None or depth <= SHALLOW[depth % 2][1]:
        return _recorded_peak(cfg)
    (a, b), keyword = SHALLOW[depth % 2], get_model(cfg.model).depth
    peak_a = _recorded_peak(cfg, {keyword: a})
    peak_b = _recorded_peak(cfg, {keyword: b})
    return round(peak_a + (peak_b - peak_a) * (depth - a) / (b - a))


SHALLOW = {0: (2, 4), 1: (3, 5)}  # the depths recorded, by the full depth's parity


def _depth(cfg: Config) -> int | None:
    """The block count of ``cfg``'s model, None if it does not declare one."""
    return _model_depth(cfg.model)


@functools.cache
def _model_depth(model: str) -> int | None:
    """From a meta build (nothing allocated), once per model: the depth is the same at every
    resolution (256 px, as ``spec.params_m`` builds it)."""
    from dimbench.registry import create_model

    keyword = get_model(model).depth
    if keyword is None:
        return None
    depth = getattr(create_model(model, image_size=256, device="meta"), keyword, None)
    return depth if isinstance(depth, int) else None


def _recorded_peak(cfg: Config, overrides: dict | None = None) -> int:
    from dimbench.measure.op_recorder import record_step

    stream = record_step(
        cfg.model, cfg.image_size, cfg.batch_size, cfg.dtype, cfg.mode, cfg.device,
        cfg.backend_kwargs(), overrides=overrides,
    )  # fmt: skip
    return stream.peak_bytes


def too_big(
    configs: Iterable[Config],
    capacity: Capacity | None = None,
    predict: Callable[[Config], int] = predicted_peak_bytes,
) -> dict[Config, dict]:
    """The configurations whose predicted peak exceeds ``capacity`` (default: their device's),
    each with its ``too_big`` result (a worker's result dict). A configuration that cannot be
    recorded (an outside model fake tensors cannot run, say) is not refused: it runs."""
    groups: dict[Config, list[Config]] = {}
    for cfg in configs:
        groups.setdefault(replace(cfg, image_size=0), []).append(cfg)
    capacities: dict[str, Capacity] = {}
    refused = {}
    for members in groups.values():
        for cfg in sorted(members, key=lambda c: c.image_size, reverse=True):
            t0 = time.perf_counter()
            try:
                peak = predict(cfg)
            except Exception:
                break
            seconds = time.perf_counter() - t0
            if cfg.device not in capacities:
                capacities[cfg.device] = capacity or device_capacity(cfg.device)
            room = capacities[cfg.device]
            if peak <= room.bytes:
                break  # and every smaller resolution fits too
            refused[cfg] = too_big_result(peak, room, seconds)
    return refused


def too_big_result(peak: int, room: Capacity, seconds: float) -> dict:
    return {
        "status": "too_big",
        "error": f"predicted peak memory {peak / MB:,.0f} MB > {room.bytes / MB:,.0f} MB "
        f"({room.source}); nothing was run (--no-memory-check runs it anyway)",
        "metrics": {"predicted_peak_mem_mb": peak / MB},
        "wall_s": seconds,  # the prediction's
    }
