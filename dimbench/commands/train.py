"""`dimbench train`: train DiM or a baseline (single process, or DDP under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Train a diffusion model on the bundled photos, an image folder or pre-extracted latents.

The defaults follow the DiM paper (AdamW lr 2e-4, weight decay 0.03, betas 0.99/0.99, eps 1e-15,
grad clip 1.0, EMA 0.9999 with timm's warm-up, label dropout 0.1; warm-up 5000 steps, capped at
10% of --steps).
Pixel space (3 channels) for photos and image folders; latents (4 channels) for .npy/.npz files,
U-ViT feature folders, or any images with --vae. Under `torchrun --nproc_per_node=N` the same
command trains with DistributedDataParallel; --batch-size is the global batch.

Writes OUT/checkpoint.pt (atomically: every 10% of the steps, every 10 minutes, at the end,
and on Ctrl-C or SIGTERM, which then exit 130 / 143), OUT/log.csv (step, loss, lr, wall_time,
images_seen, flops, grad_norm) and OUT/config.json. --resume continues a run exactly.
"""


def train(
    model: str = typer.Option(..., "--model", help="Registered model name, e.g. DiM-T/2."),
    data: str = typer.Option(
        "photos",
        "--data",
        help="'photos', an image folder (one sub-folder per class), or .npy/.npz latents.",
    ),
    image_size: int = typer.Option(..., "--image-size", help="Image resolution in pixels."),
    steps: int = typer.Option(..., "--steps", help="Total optimisation steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Global batch size (all ranks)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Run folder: checkpoint, log, config [runs/train-MODEL-SIZEpx, e.g. "
        "runs/train-DiM-T_2-32px].",
        show_default=False,
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Weak-to-strong: start from a (lower-resolution) checkpoint."
    ),
    init_weights: str = typer.Option(
        "ema", "--init-weights", help="--init-from weights: ema|model."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: 2e-4)."),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help="AdamW weight decay (default: 0.03)."
    ),
    beta1: float | None = typer.Option(None, "--beta1", help="AdamW beta1 (default: 0.99)."),
    beta2: float | None = typer.Option(None, "--beta2", help="AdamW beta2 (default: 0.99)."),
    adam_eps: float | None = typer.Option(
        None, "--adam-eps", help="AdamW epsilon (default: 1e-15)."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="Linear warm-up steps (default: min(5000, steps/10))."
    ),
    grad_clip: float | None = typer.Option(
        None, "--grad-clip", help="Gradient-norm clip, 0 = off (default: 1.0)."
    ),
    ema_decay: float | None = typer.Option(
        None, "--ema-decay", help="EMA decay (default: 0.9999)."
    ),
    ema_warmup: bool | None = typer.Option(
        None,
        "--ema-warmup/--no-ema-warmup",
        help="timm's EMA decay warm-up, 1 - (1 + step)^(-2/3) up to --ema-decay: without it a "
        "short run's EMA is still mostly its initial weights (default: on).",
    ),
    label_dropout: float | None = typer.Option(
        None, "--label-dropout", help="Probability of the null label, for CFG (default: 0.1)."
    ),
    bf16: bool | None = typer.Option(
        None, "--bf16/--no-bf16", help="bf16 autocast (default: off)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of init, data order and noise (default: 0)."
    ),
    schedule: str | None = typer.Option(
        None,
        "--schedule",
        help="scaled_linear|linear (default: DiT: linear; DiM, U-ViT: scaled_linear).",
    ),
    loss: str | None = typer.Option(
        None, "--loss", help="mse|hybrid (default: hybrid if the model learns sigma)."
    ),
    vae: str | None = typer.Option(
        None,
        "--vae",
        help="Local Stable Diffusion VAE weights: train on latents encoded on the fly.",
    ),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda."),
    scan_backend: str = typer.Option(
        "auto", "--scan-backend", help="Selective-scan backend (DiM)."
    ),
    attn_backend: str = typer.Option(
        "auto", "--attn-backend", help="Attention backend (DiT, U-ViT)."
    ),
    compile: bool = typer.Option(
        False,
        "--compile/--eager",
        help="Train the model through torch.compile (inductor; the first step compiles).",
    ),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    log_every: int = typer.Option(10, "--log-every", help="Steps per CSV row (loss averaged)."),
    ckpt_every: int | None = typer.Option(
        None,
        "--ckpt-every",
        help="Steps per checkpoint (also at the end, and on Ctrl-C / SIGTERM) [10% of --steps].",
        show_default=False,
    ),
    ckpt_minutes: float = typer.Option(
        10.0, "--ckpt-minutes", help="A checkpoint at least this often (minutes of training)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    from dimbench.train.config import TrainConfig
    from dimbench.train.trainer import train as run_training

    betas = None
    if beta1 is not None or beta2 is not None:
        betas = (0.99 if beta1 is None else beta1, 0.99 if beta2 is None else beta2)
    cfg = TrainConfig(
        model=model,
        data=data,
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        out=str(out if out is not None else default_out(model, image_size)),
        lr=lr,
        weight_decay=weight_decay,
        betas=betas,
        adam_eps=adam_eps,
        warmup=warmup,
        grad_clip=grad_clip,
        ema_decay=ema_decay,
        ema_warmup=ema_warmup,
        label_dropout=label_dropout,
        bf16=bf16,
        seed=seed,
        schedule=schedule,
        loss=loss,
        vae=vae,
        init_from=init_from,
        init_weights=init_weights,
        resume=resume,
        device=device,
        scan_backend=scan_backend,
        attn_backend=attn_backend,
        compile="inductor" if compile else "eager",
        num_workers=num_workers,
        log_every=log_every,
        ckpt_every=ckpt_every,
        ckpt_minutes=ckpt_minutes,
        progress=progress,
    )
    summary = run_training(cfg)
    if summary["is_main"]:
        typer.echo(
            f"trained {cfg.model} to step {summary['steps']}: loss {summary['loss']:.4f}, "
            f"{summary['steps_per_s']:.2f} steps/s -> {summary['out']}"
        )


def default_out(model: str, image_size: int) -> Path:
    """``runs/train-DiM-T_2-32px`` for ``--model DiM-T/2 --image-size 32``."""
    return Path("runs") / f"train-{model.replace('/', '_')}-{image_size}px"


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)
