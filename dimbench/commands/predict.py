"""`dimbench predict`: latency, peak memory and the crossovers from the cost model."""

import typer

from dimbench.bench.spec import Sweep
from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

ResultsDir = o.out("Results folder [runs/<machine>/]")


def predict(
    models: o.Models = None,
    res: o.Resolutions = None,
    batch_size: o.BatchSizes = o.default(Sweep, "batch_sizes"),
    dtype: o.Dtypes = o.default(Sweep, "dtypes"),
    mode: o.Modes = o.default(Sweep, "modes"),
    device: o.Device = DEFAULT_DEVICE,
    device_profile: o.DeviceProfile = None,
    out: ResultsDir = None,
) -> None:
    """Predict each configuration's latency and peak memory, and where each model overtakes
    each attention baseline, from a device profile (--device-profile, else this machine's for
    --device). Nothing runs: the operators are recorded on fake tensors and priced one by one
    (roofline with the device's measured efficiency). Any resolution can be asked for.

    Rows go to OUT/predict.csv (labelled with the device profile); `dimbench plot OUT` draws
    them dashed beside measured throughput.

    Example: dimbench predict --models DiM-H/2 DiT-XL/2 --res 256 512 1024 2048 4096 --dtype bf16
    --device-profile results/device_profiles/h100-sxm-datasheet.json
    """
    import time

    from dimbench.bench import prediction, session

    plan = prediction.plan(models, res, batch_size, dtype, mode, device, device_profile)
    with prediction.results_store(out) as store:
        predictor = prediction.Predictor(plan, store)
        started = time.perf_counter()
        predictor.run()
    console = session.result_console()
    console.print(predictor.table())
    for line in crossover_lines(plan, predictor.per_image_ms):
        console.print(line, markup=False, highlight=False)
    console.print(
        f"rows in {predictor.store.csv_path} ({time.perf_counter() - started:.1f} s); "
        f"predicted, not measured: {plan.profile.label}"
    )


def crossover_lines(plan, per_image_ms) -> list[str]:
    """Where each model of ``plan`` is predicted to overtake each attention baseline:
    interpolated between the requested resolutions (as `dimbench plot` does for measured rows)
    and refined by bisection on multiples of 16 px."""
    import math

    from dimbench.measure.cost_model import crossover_px
    from dimbench.plots.crossover import comparison_pairs, crossing
    from dimbench.registry import get_model

    lines = []
    resolutions = plan.resolutions
    if len(resolutions) < 2:
        return lines
    for d in plan.dtypes:
        for m in plan.modes:
            for b in plan.batch_sizes:
                for model, base in comparison_pairs(list(plan.models)):
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
