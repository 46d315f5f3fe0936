"""`dimbench train-compare`: train backbones side by side under identical conditions."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = "\n\n".join(
    [
        "Train DiM and the baselines side by side under identical conditions and measure quality.",
        "Every model sees the same data order, per-step noise and timesteps, seed, objective "
        "(epsilon MSE on one noise schedule: linear in pixel space, scaled-linear on latents), "
        "optimiser recipe, label dropout and batch size. DiT is built without its learned-sigma "
        "output and with its in-model label dropout off (the trainer drops labels once, for "
        "every model).",
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
        "(width-reduced S/2 models on 32 px photos, FLOPs-matched, equal training FLOPs; under "
        "an hour on a 2-core CPU); paper (DiM-H/2 vs DiT-XL/2 vs U-ViT-H/2 on ImageNet 256 "
        "latents with the paper's recipe, for GPUs: torchrun --nproc_per_node=8 -m dimbench.cli "
        "train-compare --preset paper --data latents.npz --vae VAE_DIR --fid-ref "
        "VIRTUAL_imagenet256_labeled.npz --out DIR). Options given explicitly override the "
        "preset.",
        "Writes OUT/train_compare.csv (one row per model and point), OUT/train_compare.json "
        "(plan, model sizes, matching, machine, command), OUT/train_compare.png/svg, "
        "OUT/summary.md and one checkpoint folder per model. A rerun with the same --out and "
        "settings resumes each model where it stopped.",
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


def train_compare(
    ctx: typer.Context,
    models: list[str] | None = typer.Option(
        None, "--models", help="Models to compare (space-separated); the first is the reference."
    ),
    data: str | None = typer.Option(
        None, "--data", help="'photos', an image folder, or .npy/.npz latents."
    ),
    image_size: int | None = typer.Option(None, "--image-size", help="Image side in pixels."),
    budget: str | None = typer.Option(
        None, "--budget", help="STEPS, FLOPs (2e15, 2PF) or SECONDS (600s, 10m)."
    ),
    out: Path = typer.Option(Path("runs/train-compare"), "--out", help="Output folder."),
    preset: str | None = typer.Option(None, "--preset", help="smoke | cpu | paper."),
    match: str | None = typer.Option(None, "--match", help="params | flops | none."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of data order, noise, init."),
    evals: int | None = typer.Option(None, "--evals", help="Evaluation points over the budget."),
    fid_every: int | None = typer.Option(
        None, "--fid-every", help="Quality metrics at every k-th point (and the last)."
    ),
    heldout_images: int | None = typer.Option(None, "--heldout-images", help="Held-out images."),
    heldout_timesteps: int | None = typer.Option(
        None, "--heldout-timesteps", help="Fixed timesteps (centres of equal bins of [0, 1000))."
    ),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Quality metrics, comma-separated: fid,swd ('' for none)."
    ),
    fid_gen: int | None = typer.Option(None, "--fid-gen", help="Samples per quality point."),
    fid_ref_count: int | None = typer.Option(
        None, "--fid-ref-count", help="Reference images (from --data unless --fid-ref)."
    ),
    fid_ref: str | None = typer.Option(
        None, "--fid-ref", help="Reference images (folder/.npz) or statistics .npz (mu, sigma)."
    ),
    sampler: str | None = typer.Option(None, "--sampler", help="dpm++ | ddim."),
    sample_steps: int | None = typer.Option(None, "--sample-steps", help="Sampler steps."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay."),
    warmup: int | None = typer.Option(None, "--warmup", help="Linear warm-up steps."),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="EMA decay."),
    bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast."),
    schedule: str | None = typer.Option(
        None, "--schedule", help="linear | scaled_linear (default: linear for pixels)."
    ),
    vae: str | None = typer.Option(None, "--vae", help="Local SD VAE (latents <-> images)."),
    order: str | None = typer.Option(
        None,
        "--order",
        help="sequential (one model after another) | interleaved (point by point).",
    ),
    ckpt_every: int | None = typer.Option(None, "--ckpt-every", help="Steps per checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    scan_backend: str = typer.Option("auto", "--scan-backend", help="Selective-scan backend."),
    attn_backend: str = typer.Option("auto", "--attn-backend", help="Attention backend."),
    compile: bool = typer.Option(
        False, "--compile/--eager", help="Every model through torch.compile (inductor)."
    ),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    inception_weights: str | None = typer.Option(
        None, "--inception-weights", help="pytorch-fid Inception weights (default: bundled)."
    ),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Reference statistics cache [default: ~/.cache/dimbench]."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    from dimbench.train.compare import CompareConfig, run_compare

    cfg = CompareConfig(
        models=list(models) if models else None,
        data=data,
        image_size=image_size,
        budget=budget,
        out=str(out),
        preset=preset,
        match=match,
        batch_size=batch_size,
        seed=seed,
        evals=evals,
        fid_every=fid_every,
        heldout_images=heldout_images,
        heldout_timesteps=heldout_timesteps,
        metrics=_metric_list(metrics),
        fid_gen=fid_gen,
        fid_ref_count=fid_ref_count,
        fid_ref=fid_ref,
        sampler=sampler,
        sample_steps=sample_steps,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        ema_decay=ema_decay,
        bf16=bf16,
        schedule=schedule,
        vae=vae,
        order=order,
        ckpt_every=ckpt_every,
        device=device,
        scan_backend=scan_backend,
        attn_backend=attn_backend,
        compile="inductor" if compile else "eager",
        num_workers=num_workers,
        inception_weights=inception_weights,
        cache_dir=cache_dir,
        progress=progress,
        command=command_line(ctx),
    )
    result = run_compare(cfg)
    if result["is_main"] and result["rows"]:
        figures = write_report(Path(result["out"]), result["rows"], Path(result["meta"]))
        typer.echo(f"wrote {result['csv']} and {', '.join(map(str, figures))}")


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
