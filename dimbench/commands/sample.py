"""`dimbench sample`: draw samples from a training checkpoint (sharded under torchrun)."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Sample from a checkpoint written by `dimbench train`; writes PNGs, samples.npz, grid.png.

--cfg-scale is the DiM paper's s in eps = eps_c + s (eps_c - eps_u): 0 = no guidance, 0.4 at
256 px and 0.7 at 512 px in the paper ("guidance 1.4 / 1.7"). --upsample 2|3 samples at 2x/3x
the training resolution by direct extrapolation, plus upsample guidance (Hwang et al.) unless
--no-upsample-guidance. Under `torchrun --nproc_per_node=N` the batches are shared by the ranks.
"""


def sample(
    ckpt: Path = typer.Option(..., "--ckpt", help="checkpoint.pt, or a run folder holding one."),
    num: int = typer.Option(
        16,
        "--num",
        "--num-samples",
        help="Number of samples (under torchrun write --num-samples: torchrun's own parser "
        "takes --num for its --numa-binding).",
    ),
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++|ddim|ddpm."),
    steps: int | None = typer.Option(
        None, "--steps", help="Sampling steps (default: dpm++ 50, ddim 50, ddpm 250)."
    ),
    cfg_scale: float = typer.Option(0.0, "--cfg-scale", help="Guidance s, paper form (0 = none)."),
    upsample: int | None = typer.Option(
        None, "--upsample", help="Training-free upsampling factor: 2 or 3."
    ),
    upsample_guidance: bool = typer.Option(
        True,
        "--upsample-guidance/--no-upsample-guidance",
        help="Upsample guidance with --upsample.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder [CKPT's run folder/samples].", show_default=False
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Samples per batch (global batches)."),
    seed: int = typer.Option(0, "--seed", help="Seed of labels and noise."),
    weights: str = typer.Option("ema", "--weights", help="ema|model."),
    class_label: int | None = typer.Option(
        None,
        "--class-label",
        help="One class for every sample (default: random over the data's classes).",
    ),
    order: int = typer.Option(2, "--order", help="DPM-Solver++ order: 1, 2 or 3."),
    eta: float = typer.Option(0.0, "--eta", help="DDIM eta, >= 0 (0 = deterministic)."),
    vae: str | None = typer.Option(
        None,
        "--vae",
        help="Local SD VAE to decode latents (default: the one used in training, if any).",
    ),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda."),
    scan_backend: str = typer.Option("auto", "--scan-backend", help="Selective-scan backend."),
    attn_backend: str = typer.Option("auto", "--attn-backend", help="Attention backend."),
    clip_x0: bool | None = typer.Option(
        None,
        "--clip-x0/--no-clip-x0",
        help="Clamp every x_0 prediction to [-1, 1] [on for pixel-space models, off for latents].",
        show_default=False,
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    from dimbench.train import distributed as D
    from dimbench.train.generate import generate

    if out is None:
        out = (ckpt if ckpt.is_dir() else ckpt.parent) / "samples"
    dist = D.setup(device)
    try:
        summary = generate(
            ckpt,
            out,
            num=num,
            sampler=sampler,
            steps=steps,
            cfg_scale=cfg_scale,
            upsample=upsample,
            upsample_guidance=upsample_guidance,
            batch_size=batch_size,
            seed=seed,
            weights=weights,
            class_label=class_label,
            order=order,
            eta=eta,
            vae=vae,
            scan_backend=scan_backend,
            attn_backend=attn_backend,
            progress=progress,
            dist=dist,
            clip_x0=clip_x0,
        )
    finally:
        D.cleanup()
    if dist.is_main:
        size = "x".join(str(s) for s in summary["image_size"])
        typer.echo(
            f"{num} samples of {summary['model']} at {size} ({sampler}, {summary['steps']} steps) "
            f"from its {summary['weights_used']} in {summary['seconds']:.1f} s -> {out}"
        )
        if summary["weights_warning"]:
            typer.echo(f"warning: {summary['weights_warning']}", err=True)
        if "lag1_autocorrelation" in summary:
            typer.echo(
                f"mean lag-1 pixel autocorrelation {summary['lag1_autocorrelation']:.2f} "
                "(noise ~0, photographs ~0.9)"
            )
        if not summary["decoded"]:
            typer.echo("latent samples saved as samples.npz 'latents'; pass --vae to decode to PNG")


def register(app: typer.Typer) -> None:
    app.command("sample", help=HELP)(sample)
