"""`dimbench sample`: draw samples from a training checkpoint (sharded under torchrun)."""

from pathlib import Path
from typing import Annotated

import typer

from dimbench.cli import options as o
from dimbench.diffusion.sampler_names import DEFAULT_STEPS, SAMPLERS
from dimbench.train.sample_config import SampleConfig

HELP = """Sample from a checkpoint written by `dimbench train`; writes PNGs, samples.npz, grid.png.

--cfg-scale is the DiM paper's s in eps = eps_c + s (eps_c - eps_u): 0 = no guidance, 0.4 at
256 px and 0.7 at 512 px in the paper ("guidance 1.4 / 1.7"). --upsample 2|3 samples at 2x/3x
the training resolution by direct extrapolation, plus upsample guidance (Hwang et al.) unless
--no-upsample-guidance. Under `torchrun --nproc_per_node=N` the batches are shared by the ranks.
"""


Ckpt = Annotated[Path, typer.Option("--ckpt", help="checkpoint.pt, or a run folder holding one")]
Num = Annotated[
    int,
    typer.Option(
        "--num",
        "--num-samples",
        help="Number of samples (under torchrun write --num-samples: torchrun's own parser "
        "takes --num for its --numa-binding)",
    ),
]
Sampler = Annotated[str, typer.Option("--sampler", help=" | ".join(SAMPLERS))]
Steps = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Sampling steps [" + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + "]",
        show_default=False,
    ),
]
CfgScale = Annotated[float, typer.Option("--cfg-scale", help="Guidance s, paper form (0 = none)")]
Upsample = Annotated[
    int | None, typer.Option("--upsample", help="Training-free upsampling factor: 2 or 3")
]
UpsampleGuidance = Annotated[
    bool,
    typer.Option(
        "--upsample-guidance/--no-upsample-guidance", help="Upsample guidance with --upsample"
    ),
]
SamplesDir = o.out("Output folder [CKPT's run folder/samples]")
BatchSize = Annotated[int, typer.Option("--batch-size", help="Samples per batch (global batches)")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of labels and noise")]
ClassLabel = Annotated[
    int | None,
    typer.Option(
        "--class-label",
        help="One class for every sample [random over the data's classes]",
        show_default=False,
    ),
]
Order = Annotated[int, typer.Option("--order", help="DPM-Solver++ order: 1, 2 or 3")]
Eta = Annotated[float, typer.Option("--eta", help="DDIM eta, >= 0 (0 = deterministic)")]
ClipX0 = Annotated[
    bool | None,
    typer.Option(
        "--clip-x0/--no-clip-x0",
        help="Clamp every x_0 prediction to [-1, 1] [on for pixel-space models, off for latents]",
        show_default=False,
    ),
]
D = SampleConfig  # the defaults


def sample(
    ckpt: Ckpt,
    num: Num = D.num,
    sampler: Sampler = D.sampler,
    steps: Steps = D.steps,
    cfg_scale: CfgScale = D.cfg_scale,
    upsample: Upsample = D.upsample,
    upsample_guidance: UpsampleGuidance = D.upsample_guidance,
    out: SamplesDir = None,
    batch_size: BatchSize = D.batch_size,
    seed: Seed = D.seed,
    ckpt_weights: o.CkptWeights = D.weights,
    class_label: ClassLabel = D.class_label,
    order: Order = D.order,
    eta: Eta = D.eta,
    vae: o.Vae = D.vae,
    device: o.Device = D.device,
    scan_backend: o.ScanBackend = D.scan_backend,
    attn_backend: o.AttnBackend = D.attn_backend,
    conv_backend: o.ConvBackend = D.conv_backend,
    clip_x0: ClipX0 = D.clip_x0,
    progress: o.Progress = D.progress,
) -> None:
    given = {k: v for k, v in locals().items() if k not in ("ckpt", "out", "ckpt_weights")}
    from dimbench.train import distributed
    from dimbench.train.generate import generate

    cfg = SampleConfig(**given, weights=ckpt_weights)
    out = out if out is not None else (ckpt if ckpt.is_dir() else ckpt.parent) / "samples"
    cfg.validate()  # before torchrun's process group is joined
    dist = distributed.setup(cfg.device)
    try:
        summary = generate(ckpt, out, cfg, dist)
    finally:
        distributed.cleanup()
    if dist.is_main:
        report(summary, out)


def report(summary: dict, out: Path) -> None:
    """What was drawn, and the warnings about it."""
    size = "x".join(str(s) for s in summary["image_size"])
    typer.echo(
        f"{summary['num']} samples of {summary['model']} at {size} ({summary['sampler']}, "
        f"{summary['steps']} steps) from its {summary['weights_used']} in "
        f"{summary['seconds']:.1f} s -> {out}"
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
