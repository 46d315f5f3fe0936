"""`dimbench train-compare`: train backbones side by side under identical conditions."""

from pathlib import Path
from typing import Annotated

import typer

from dimbench.cli import options as o
from dimbench.train.compare.config import (
    MATCH_MODES,
    PRESETS,
    SAMPLERS,
    CompareConfig,
    unset_recipe,
)
from dimbench.train.config import TrainConfig

HELP = "\n\n".join(
    [
        "Train DiM and the baselines side by side under identical conditions and measure quality.",
        "Every model sees the same data order, per-step noise and timesteps, seed, objective "
        "(epsilon MSE on one noise schedule: linear in pixel space, scaled-linear on latents), "
        "optimiser recipe, label dropout and batch size. DiT is built without its learned-sigma "
        "output and with its in-model label dropout off (the trainer drops labels once, for "
        "every model); U-ViT's final 3x3 conv starts as the identity (recorded in the plan and "
        "summary.md).",
        "--seeds N trains every model N times (seeds --seed, --seed + 1, ...: data order, init "
        "and noise follow the seed); summary.md gives the mean and 95% CI over seeds and says "
        "which models a paired t-test across seeds cannot tell apart. The held-out images are "
        "images training never sees (whole bundled photographs, or --heldout DIR), with the same "
        "noise and timesteps for every model and seed.",
        "--budget: STEPS (2000), training FLOPs (2e15, 2PF, 300TFLOPs: each model gets budget / "
        "its FLOPs per step) or training SECONDS (600s, 10m, 1h). At --evals points evenly over "
        "the budget (in its unit, so curves line up) and at step 0, the held-out denoising loss "
        "is measured (fixed images x fixed timestep grid x fixed noise; EMA and raw weights, "
        "eval mode, true labels), and at every --fid-every-th point and the last a quick-look "
        "FID (and SWD) of --fid-gen EMA samples against --fid-ref-count reference images. Every "
        "FID row records n_gen and n_ref: FID on a few hundred samples is biased, compare only "
        "at equal counts.",
        "--match params|flops scales the width of every model after the first so that its "
        "parameters or forward FLOPs per image match the first model's (heads follow the "
        "width); what it chose is printed and recorded.",
        "Presets: smoke (tiny models, 32 px photos, seconds; the tests run it); cpu "
        "(width-reduced S/2 models on 32 px photos, FLOPs-matched, equal training FLOPs, 3 seeds: "
        "about 90 minutes on a 2-core AVX-512 CPU, 3 hours on a 2-core AVX2 one; --budget 2e13 "
        "takes 40%); paper (DiM-H/2 vs DiT-XL/2 vs U-ViT-H/2 on ImageNet 256 "
        "latents with the paper's recipe, for GPUs: torchrun --nproc_per_node=8 -m dimbench.cli "
        "train-compare --preset paper --data latents.npz --vae VAE_DIR --fid-ref "
        "VIRTUAL_imagenet256_labeled.npz --out DIR). Options given explicitly override the "
        "preset.",
        "Several devices: --devices cuda:0 cuda:1 (or all) trains the (model, seed) runs at "
        "once, one per GPU, each in a process of its own under the same settings (--workers N: "
        "one per 1/N of a CPU's cores, threads = its cores); torchrun --nproc_per_node=N "
        "instead trains each model data-parallel over N GPUs (DDP), one model after another.",
        "Writes OUT/train_compare.csv (one row per model, seed and point), OUT/train_compare.json "
        "(plan, model sizes, matching, machine, command), OUT/train_compare.png/svg, "
        "OUT/summary.md and one checkpoint folder per model and seed. A rerun with the same --out "
        "and settings resumes each model where it stopped.",
    ]
)


def command_line(ctx: typer.Context) -> str:
    """The command as typed, rebuilt from the options given on the command line (recorded
    in the run's metadata)."""
    import shlex

    parts = ctx.command_path.split()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if isinstance(value, bool):
            parts.append(param.opts[0] if value else param.secondary_opts[0])
        elif isinstance(value, list | tuple):
            parts += [param.opts[0], *map(str, value)]
        else:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


CompareModels = Annotated[
    list[str] | None,
    typer.Option(
        "--models",
        help="Models to compare (space-separated); the first is the reference [the preset's]",
        show_default=False,
    ),
]


def _option(flag: str, kind: type, help: str):
    """A train-compare option whose default (None) is the preset's, then the base one."""
    return Annotated[kind | None, typer.Option(flag, help=f"{help} [the preset's]")]


Budget = _option("--budget", str, "STEPS, FLOPs (2e15, 2PF) or SECONDS (600s, 10m)")
Preset = Annotated[str | None, typer.Option("--preset", help=" | ".join(PRESETS))]
Match = _option("--match", str, " | ".join(MATCH_MODES))
Evals = _option("--evals", int, "Evaluation points over the budget")
FidEvery = _option("--fid-every", int, "Quality metrics at every k-th point (and the last)")
HeldoutImages = _option("--heldout-images", int, "Held-out images")
Heldout = Annotated[
    str | None,
    typer.Option(
        "--heldout",
        help="Folder of held-out images (any depth; resized and centre-cropped) [photos: two "
        "bundled photographs held out whole; other data: a seeded choice of its samples]",
        show_default=False,
    ),
]
Seeds = _option("--seeds", int, "Runs per model, under seeds --seed, --seed + 1, ...")
HeldoutTimesteps = _option(
    "--heldout-timesteps", int, "Fixed timesteps (centres of equal bins of [0, 1000))"
)
Metrics = _option("--metrics", str, "Quality metrics, comma-separated: fid,swd ('' for none)")
FidGen = _option("--fid-gen", int, "Samples per quality point")
FidRefCount = _option("--fid-ref-count", int, "Reference images (from --data unless --fid-ref)")
FidRef = _option("--fid-ref", str, "Reference images (folder/.npz) or statistics .npz (mu, sigma)")
Sampler = _option("--sampler", str, " | ".join(SAMPLERS))
SampleSteps = _option("--sample-steps", int, "Sampler steps")
Order = _option(
    "--order", str, "sequential (one model after another) | interleaved (point by point)"
)
CompareDir = o.out(f"Output folder [{o.default(CompareConfig, 'out')}]")
RECIPE = ("data", "image_size", "batch_size", "seed", "lr", "weight_decay", "warmup",
          "ema_decay", "dtype", "schedule", "vae", "ckpt_every", "device", "scan_backend",
          "attn_backend", "conv_backend", "num_workers")  # fmt: skip


def train_compare(
    ctx: typer.Context,
    models: CompareModels = None,
    data: o.Data = None,
    image_size: o.ImageSize = None,
    budget: Budget = None,
    out: CompareDir = None,
    preset: Preset = None,
    match: Match = None,
    batch_size: o.BatchSize = None,
    seed: o.Seed = None,
    seeds: Seeds = None,
    evals: Evals = None,
    fid_every: FidEvery = None,
    heldout_images: HeldoutImages = None,
    heldout_timesteps: HeldoutTimesteps = None,
    heldout: Heldout = None,
    metrics: Metrics = None,
    fid_gen: FidGen = None,
    fid_ref_count: FidRefCount = None,
    fid_ref: FidRef = None,
    sampler: Sampler = None,
    sample_steps: SampleSteps = None,
    lr: o.Lr = None,
    weight_decay: o.WeightDecay = None,
    warmup: o.Warmup = None,
    ema_decay: o.EmaDecay = None,
    dtype: o.Dtype = None,
    schedule: o.Schedule = None,
    vae: o.Vae = None,
    order: Order = None,
    ckpt_every: o.CkptEvery = None,
    device: o.Device = o.default(TrainConfig, "device"),
    scan_backend: o.ScanBackend = o.default(TrainConfig, "scan_backend"),
    attn_backend: o.AttnBackend = o.default(TrainConfig, "attn_backend"),
    conv_backend: o.ConvBackend = o.default(TrainConfig, "conv_backend"),
    compile: o.Compile = False,
    num_workers: o.NumWorkers = o.default(TrainConfig, "num_workers"),
    inception_weights: o.InceptionWeights = None,
    cache_dir: o.CacheDir = None,
    progress: o.Progress = o.default(CompareConfig, "progress"),
    devices: o.Devices = None,
    workers: o.Workers = 1,
) -> None:
    slots = None
    if devices or workers != 1:  # the models at once, one per slot
        device, slots = _slots(device, devices, workers)
    given = dict(locals())
    from dimbench.train.compare import run_compare

    recipe = {k: given.pop(k) for k in RECIPE}
    for k in ("ctx", "compile", "out", "metrics", "inception_weights", "cache_dir"):
        given.pop(k)
    for k in ("devices", "workers", "slots"):
        given.pop(k)
    cfg = CompareConfig(
        **given,
        recipe=unset_recipe(**recipe, compile="inductor" if compile else "eager"),
        out=str(out if out is not None else o.default(CompareConfig, "out")),
        metrics=_metric_list(metrics),
        inception_weights=str(inception_weights) if inception_weights else None,
        cache_dir=str(cache_dir) if cache_dir else None,
        command=command_line(ctx),
    )
    result = run_compare(cfg, slots)
    if result["is_main"] and result["rows"]:
        figures = write_report(Path(result["out"]), result["rows"], Path(result["meta"]))
        typer.echo(f"wrote {result['csv']} and {', '.join(map(str, figures))}")


def _slots(device: str, devices: list[str] | None, workers: int) -> tuple[str, list]:
    """The device every model's process names (``cuda``: its slot's GPU) and the slots."""
    import os

    from dimbench.devices import DEFAULT_DEVICE, parse_device
    from dimbench.errors import UsageError
    from dimbench.pool import placement

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--devices / --workers train the models side by side; not under torchrun")
    if devices and device == DEFAULT_DEVICE:
        device = "cuda"
    device = parse_device(device, allow_auto=True)
    return device, placement(device, devices, workers)


def write_report(out: Path, rows: list[dict], meta_path: Path) -> list[Path]:
    """The figures (train_compare.png/svg) and summary.md of a finished comparison."""
    from dimbench.plots.training import plot_train_compare
    from dimbench.train.compare.summary import summary_markdown

    figures = plot_train_compare(out, rows=rows)
    (out / "summary.md").write_text(summary_markdown(rows, meta_path))
    return figures


def _metric_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(m.strip() for m in text.split(",") if m.strip())


def register(app: typer.Typer) -> None:
    app.command("train-compare", help=HELP)(train_compare)
