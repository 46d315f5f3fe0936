"""``dimbench predict``'s work: each configuration priced by the cost model from a device
profile (nothing runs), its rows written to OUT/predict.csv, and the table of them. The
predict suite (``dimbench.bench.suites.predict``) prices one configuration; this drives it
over the cross product, in this process, for a profile of any device (a datasheet's too)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dimbench.bench.spec import DEFAULT_RESOLUTIONS, DTYPES, MODES, NO_BACKEND, Config, fmt
from dimbench.errors import UsageError

if TYPE_CHECKING:
    from rich.table import Table

    from dimbench.measure.device_profile import DeviceProfile
    from dimbench.results import ResultStore


@dataclass(frozen=True)
class PredictPlan:
    """What to price, with which device profile (validated by ``plan``)."""

    profile: DeviceProfile
    models: list[str]
    resolutions: list[int]
    batch_sizes: list[int]
    dtypes: list[str]
    modes: list[str]

    def keys(self) -> list[tuple[str, int, int, str, str]]:
        """(model, resolution, batch, dtype, mode) in the order they are priced and shown."""
        return [
            (model, r, b, d, m)
            for d in self.dtypes
            for m in self.modes
            for b in self.batch_sizes
            for model in self.models
            for r in self.resolutions
        ]


def plan(
    models: list[str] | None,
    resolutions: list[int] | None,
    batch_sizes: list[int],
    dtypes: list[str],
    modes: list[str],
    device: str,
    device_profile: Path | None,
) -> PredictPlan:
    """The profile (``device_profile``, else this machine's for ``device``) and the
    configurations, checked (one-line UsageErrors)."""
    from dimbench.bench.registry import get_suite
    from dimbench.devices import parse_device
    from dimbench.measure import device_profile as dp
    from dimbench.registry import get_model

    if device_profile is not None:
        profile = dp.load(device_profile)
    else:
        device = parse_device(device, allow_auto=True)
        profile = dp.cached(device)
        if profile is None:
            raise UsageError(
                f"no device profile for {device} on this machine ({dp.default_path(device)}): "
                "run `dimbench calibrate` or pass --device-profile FILE"
            )
    chosen = list(models) if models else list(get_suite("predict").default_models(profile.device))
    resolutions = sorted(set(resolutions)) if resolutions else list(DEFAULT_RESOLUTIONS)
    for m in chosen:
        for r in resolutions:
            get_model(m).input_size(r)
    for b in batch_sizes:
        if b < 1:
            raise UsageError(f"batch size must be >= 1, got {b}")
    for name, values, allowed in (("dtype", dtypes, DTYPES), ("mode", modes, MODES)):
        for v in values:
            if v not in allowed:
                raise UsageError(f"unknown {name} {v!r}; valid: {', '.join(allowed)}")
    return PredictPlan(profile, chosen, resolutions, list(batch_sizes), list(dtypes), list(modes))


@contextmanager
def results_store(out: Path | None) -> Iterator[ResultStore]:
    """OUT/predict.csv (default: this machine's runs folder), checked before anything runs;
    the folder stays locked (``OutLock``) until the block ends."""
    from dimbench.bench.registry import get_suite
    from dimbench.bench.session import default_out
    from dimbench.out_lock import OutLock
    from dimbench.paths import writable_dir
    from dimbench.results import ResultStore

    out_dir = writable_dir(out if out is not None else default_out("cpu"))
    with OutLock(out_dir):
        store = ResultStore(out_dir, get_suite("predict").schema)
        store.check()
        yield store


class Predictor:
    """Prices configurations of a plan (cached), writing a row per configuration when asked."""

    def __init__(self, plan: PredictPlan, store: ResultStore):
        import torch

        from dimbench.measure.cost_model import CostModel
        from dimbench.measure.metadata import run_metadata

        self.plan, self.store = plan, store
        profile = plan.profile
        # record on the profile's device where this machine has it (its kernels' names), else here
        self.here = "cuda" if profile.device == "cuda" and torch.cuda.is_available() else "cpu"
        self.cost = CostModel(profile)
        self.meta = {**run_metadata(self.here), "device_name": profile.device_name}
        self.cache: dict[tuple, float] = {}

    def config(self, model: str, r: int, b: int, d: str, m: str) -> Config:
        """The configuration, with the backends the profile names (else ``auto``'s here)."""
        from dimbench.ops.backends import resolve
        from dimbench.registry import KERNELS, get_model

        backends = dict.fromkeys(KERNELS.values(), NO_BACKEND)
        for kernel in get_model(model).kernels:
            named = self.plan.profile.backends.get(kernel)
            backends[KERNELS[kernel]] = named or resolve(kernel, "auto", self.here, d)
        device = self.plan.profile.device
        return Config(
            suite="predict", model=model, image_size=r, batch_size=b, device=device, dtype=d,
            mode=m, **backends,
        )  # fmt: skip

    def per_image_ms(self, model: str, r: int, b: int, d: str, m: str, write: bool = False):
        """Predicted ms per image; ``write``: price it again and append its row."""
        from dimbench.bench.runner import result_rows
        from dimbench.bench.suites.predict import predict

        key = (model, r, b, d, m)
        if key not in self.cache or write:
            cfg = self.config(model, r, b, d, m)
            t0 = time.perf_counter()
            result = {"status": "ok", "error": None, "meta": self.meta}
            result |= predict(cfg, self.cost, self.here)
            result["wall_s"] = time.perf_counter() - t0
            if write:
                self.store.append(result_rows(cfg, result)[0], raw=result["raw"])
            self.cache[key] = result["metrics"]["predicted_latency_ms"] / b
        return self.cache[key]

    def run(self) -> None:
        """Price and write every configuration of the plan, with a status line on stderr."""
        from rich.console import Console

        keys = self.plan.keys()
        with Console(stderr=True).status("predicting") as status:
            for i, (model, r, b, d, m) in enumerate(keys):
                status.update(f"predicting {model} @ {r}px b{b} {d} {m} ({i + 1}/{len(keys)})")
                self.per_image_ms(model, r, b, d, m, write=True)

    def table(self) -> Table:
        """The plan's rows as written (the latest of each)."""
        from rich.table import Table

        profile = self.plan.profile
        df = self.store.frame()
        df = df[df["device_profile"] == profile.label]
        table = Table(
            title=f"dimbench predict [{profile.label}: {profile.device_name}]", title_justify="left"
        )
        for name in (
            "model", "res", "batch", "dtype", "mode", "predicted ms", "img/s", "peak MB",
            "roofline ms", "GFLOP",
        ):  # fmt: skip
            table.add_column(
                name, justify="left" if name in ("model", "dtype", "mode") else "right"
            )
        for model, r, b, d, m in self.plan.keys():
            sel = df[
                (df["model"] == model)
                & (df["image_size"] == r)
                & (df["batch_size"] == b)
                & (df["dtype"] == d)
                & (df["mode"] == m)
            ]
            if sel.empty:
                continue
            x = sel.iloc[-1]
            table.add_row(
                model, str(r), str(b), d, m,
                fmt(x["predicted_latency_ms"], ".1f"), fmt(x["predicted_imgs_per_s"], ".3g"),
                fmt(x["predicted_peak_mem_mb"], ".0f"), fmt(x["roofline_latency_ms"], ".3g"),
                fmt(x["gflops"], ".4g"),
            )  # fmt: skip
        return table
