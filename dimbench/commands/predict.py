"""`dimbench predict`: latency, peak memory and the crossovers from the cost model."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(
    models: list[str] = typer.Option(
        None,
        "--models",
        help="Registry names [the suites' defaults for the profile's device]",
    ),
    res: list[int] = typer.Option(
        None,
        "--res",
        help="Image sizes in px, space-separated; any size, nothing runs [256 512 1024 1536]",
    ),
    batch_size: list[int] = typer.Option([1], "--batch-size", help="Batch sizes"),
    dtype: list[str] = typer.Option(["fp32"], "--dtype", help="fp32 | bf16 | fp16 (autocast)"),
    mode: list[str] = typer.Option(
        ["forward"], "--mode", help="forward | train (forward + backward + AdamW step)"
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Whose calibrated profile to use (without --device-profile)"
    ),
    device_profile: Path = typer.Option(
        None,
        "--device-profile",
        help="A device profile file, measured (dimbench calibrate --out) or written from a "
        "datasheet (results/device_profiles/) [this machine's for --device]",
        show_default=False,
    ),
    out: Path = typer.Option(
        None, "--out", help="Results folder [runs/<machine>/]", show_default=False
    ),
) -> None:
    """Predict each configuration's latency and peak memory, and where each model overtakes
    each attention baseline, from a device profile. Nothing runs: the operators are recorded
    on fake tensors and priced one by one (roofline with the device's measured efficiency).

    Rows go to OUT/predict.csv (labelled with the device profile); `dimbench plot OUT` draws
    them dashed beside measured throughput.

    Example: dimbench predict --models DiM-H/2 DiT-XL/2 --res 256 512 1024 2048 4096 --dtype bf16
    --device-profile results/device_profiles/h100-sxm-datasheet.json
    """
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from dimbench.bench.registry import get_suite
    from dimbench.bench.runner import result_rows
    from dimbench.bench.spec import DEFAULT_RESOLUTIONS, DTYPES, MODES, Config, fmt
    from dimbench.bench.suites.predict import predict as predict_config
    from dimbench.commands.run import default_out
    from dimbench.devices import parse_device
    from dimbench.errors import UsageError
    from dimbench.measure import device_profile as dp
    from dimbench.measure.cost_model import CostModel
    from dimbench.paths import writable_dir
    from dimbench.registry import get_model
    from dimbench.results import ResultStore

    if device_profile is not None:
        profile = dp.load(device_profile)
    else:
        device = parse_device(device)
        profile = dp.cached(device)
        if profile is None:
            raise UsageError(
                f"no device profile for {device} on this machine ({dp.default_path(device)}): "
                "run `dimbench calibrate` or pass --device-profile FILE"
            )
    target = profile.device
    chosen = list(models) if models else list(get_suite("predict").default_models(target))
    resolutions = sorted(set(res)) if res else list(DEFAULT_RESOLUTIONS)
    for m in chosen:
        for r in resolutions:
            get_model(m).input_size(r)
    for b in batch_size:
        if b < 1:
            raise UsageError(f"batch size must be >= 1, got {b}")
    for name, values, allowed in (("dtype", dtype, DTYPES), ("mode", mode, MODES)):
        for v in values:
            if v not in allowed:
                raise UsageError(f"unknown {name} {v!r}; valid: {', '.join(allowed)}")
    out_dir = writable_dir(out if out is not None else default_out("cpu"))
    store = ResultStore(out_dir, get_suite("predict").schema)
    store.check()

    from dimbench.measure.metadata import run_metadata

    # record on the profile's device where this machine has it (its kernels' names), else here
    here = "cuda" if target == "cuda" and torch.cuda.is_available() else "cpu"
    cost = CostModel(profile)
    meta = {**run_metadata(here), "device_name": profile.device_name}
    console = Console(stderr=True)
    cache: dict[tuple, float] = {}

    def config(model: str, r: int, b: int, d: str, m: str) -> Config:
        from dimbench.bench.spec import NO_BACKEND
        from dimbench.ops.backends import resolve
        from dimbench.registry import KERNELS

        backends = dict.fromkeys(KERNELS.values(), NO_BACKEND)
        for kernel in get_model(model).kernels:
            named = profile.backends.get(kernel)
            backends[KERNELS[kernel]] = named or resolve(kernel, "auto", here, d)
        return Config(
            suite="predict", model=model, image_size=r, batch_size=b, device=target,
            dtype=d, mode=m, **backends,
        )  # fmt: skip

    def per_image_ms(model, r, b, d, m, write=False):
        key = (model, r, b, d, m)
        if key not in cache or write:
            cfg = config(model, r, b, d, m)
            t0 = time.perf_counter()
            result = {
                "status": "ok",
                "error": None,
                "meta": meta,
                **predict_config(cfg, cost, here),
            }
            result["wall_s"] = time.perf_counter() - t0
            if write:
                row = result_rows(cfg, result)[0]
                store.append(row, raw=result["raw"])
            cache[key] = result["metrics"]["predicted_latency_ms"] / b
        return cache[key]

    started = time.perf_counter()
    rows = []
    total = len(chosen) * len(resolutions) * len(batch_size) * len(dtype) * len(mode)
    with console.status("predicting") as status:
        for d in dtype:
            for m in mode:
                for b in batch_size:
                    for model in chosen:
                        for r in resolutions:
                            status.update(
                                f"predicting {model} @ {r}px b{b} {d} {m} ({len(rows) + 1}/{total})"
                            )
                            ms = per_image_ms(model, r, b, d, m, write=True) * b
                            rows.append((model, r, b, d, m, ms))
    df = store.frame()
    df = df[df["device_profile"] == profile.label]
    table = Table(
        title=f"dimbench predict [{profile.label}: {profile.device_name}]", title_justify="left"
    )
    for name in (
        "model",
        "res",
        "batch",
        "dtype",
        "mode",
        "predicted ms",
        "img/s",
        "peak MB",
        "roofline ms",
        "GFLOP",
    ):
        table.add_column(name, justify="left" if name in ("model", "dtype", "mode") else "right")
    for model, r, b, d, m, _ in rows:
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
            model,
            str(r),
            str(b),
            d,
            m,
            fmt(x["predicted_latency_ms"], ".1f"),
            fmt(x["predicted_imgs_per_s"], ".3g"),
            fmt(x["predicted_peak_mem_mb"], ".0f"),
            fmt(x["roofline_latency_ms"], ".3g"),
            fmt(x["gflops"], ".4g"),
        )
    out_console = Console() if Console().is_terminal else Console(width=160)
    out_console.print(table)
    for line in crossover_lines(chosen, resolutions, batch_size, dtype, mode, per_image_ms):
        out_console.print(line, markup=False, highlight=False)
    out_console.print(
        f"rows in {store.csv_path} ({time.perf_counter() - started:.1f} s); predicted, "
        f"not measured: {profile.label}"
    )


def crossover_lines(models, resolutions, batch_sizes, dtypes, modes, per_image_ms) -> list[str]:
    """Where each model is predicted to overtake each attention baseline: interpolated between
    the requested resolutions (as `dimbench plot` does for measured rows) and refined by
    bisection on multiples of 16 px."""
    import math

    from dimbench.measure.cost_model import crossover_px
    from dimbench.plots.crossover import comparison_pairs, crossing
    from dimbench.registry import get_model

    lines = []
    if len(resolutions) < 2:
        return lines
    for d in dtypes:
        for m in modes:
            for b in batch_sizes:
                for model, base in comparison_pairs(list(models)):
                    ratios = [
                        per_image_ms(base, r, b, d, m) / per_image_ms(model, r, b, d, m)
                        for r in resolutions
                    ]
                    label = f"[{d}, {m}, batch {b}]"
                    measured = zip(resolutions, ratios, strict=True)
                    pairs = ", ".join(f"{r}: {q:.2f}x" for r, q in measured)
                    grid = crossing(list(resolutions), ratios)
                    if grid is None:
                        where = "ahead" if all(q >= 1 for q in ratios) else "behind"
                        lines.append(
                            f"{label} {model} vs {base}: predicted {where} at every resolution "
                            f"({pairs})"
                        )
                        continue
                    i = next(i for i in range(1, len(ratios)) if ratios[i - 1] < 1 <= ratios[i])
                    step = math.lcm(*(8 * get_model(n).patch_size for n in (model, base)))
                    fine = crossover_px(
                        lambda r, name, b=b, d=d, m=m: per_image_ms(name, r, b, d, m),
                        model, base, resolutions[i - 1], resolutions[i], step,
                    )  # fmt: skip
                    fine_text = f", {fine:.0f} px on a 16-px grid" if fine else ""
                    lines.append(
                        f"{label} {model} is predicted to overtake {base} at about {grid:.0f} px "
                        f"(interpolated{fine_text}; {model} / {base} throughput: {pairs})"
                    )
    return lines


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
