"""`dimbench train`: train DiM or a baseline (single process, or DDP under torchrun)."""

from pathlib import Path
from typing import Annotated

import typer

from dimbench.cli import options as o
from dimbench.train.config import PAPER_DEFAULTS, PAPER_WARMUP, TrainConfig

_P = {k: o.number(v) for k, v in PAPER_DEFAULTS.items() if isinstance(v, float)}  # for help
_BETAS = [o.number(b) for b in PAPER_DEFAULTS["betas"]]
HELP = f"""Train a diffusion model on the bundled photos, an image folder or pre-extracted latents.

The defaults follow the DiM paper (AdamW lr {_P["lr"]}, weight decay {_P["weight_decay"]},
betas {_BETAS[0]}/{_BETAS[1]}, eps {_P["adam_eps"]}, grad clip
{_P["grad_clip"]}, EMA {_P["ema_decay"]} with timm's warm-up, label dropout
{_P["label_dropout"]}; warm-up {PAPER_WARMUP} steps, capped at 10% of --steps).
Pixel space (3 channels) for photos and image folders; latents (4 channels) for .npy/.npz files,
U-ViT feature folders, or any images with --vae. Under `torchrun --nproc_per_node=N` the same
command trains with DistributedDataParallel; --batch-size is the global batch.

Writes OUT/checkpoint.pt (atomically: every 10% of the steps, every 10 minutes, at the end,
and on Ctrl-C or SIGTERM, which then exit 130 / 143), OUT/log.csv (step, loss, lr, wall_time,
images_seen, flops, grad_norm) and OUT/config.json. --resume continues a run exactly.
"""


Model = Annotated[str, typer.Option("--model", help="Registered model name, e.g. DiM-T/2")]
Steps = Annotated[int, typer.Option("--steps", help="Total optimisation steps", show_default=False)]
RunDir = o.out(
    "Run folder: checkpoint, log, config [runs/train-MODEL-SIZEpx, e.g. runs/train-DiM-T_2-32px]"
)
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly")]
InitFrom = Annotated[
    str | None,
    typer.Option("--init-from", help="Weak-to-strong: start from a (lower-resolution) checkpoint"),
]
Beta1 = Annotated[
    float | None,
    typer.Option("--beta1", help=f"AdamW beta1 [{_BETAS[0]}]"),
]
Beta2 = Annotated[
    float | None,
    typer.Option("--beta2", help=f"AdamW beta2 [{_BETAS[1]}]"),
]
AdamEps = Annotated[
    float | None,
    typer.Option("--adam-eps", help=f"AdamW epsilon [{_P['adam_eps']}]"),
]
GradClip = Annotated[
    float | None,
    typer.Option("--grad-clip", help=f"Gradient-norm clip, 0 = off [{_P['grad_clip']}]"),
]
EmaWarmup = Annotated[
    bool | None,
    typer.Option(
        "--ema-warmup/--no-ema-warmup",
        help="timm's EMA decay warm-up, 1 - (1 + step)^(-2/3) up to --ema-decay: without it a "
        "short run's EMA is still mostly its initial weights "
        f"[{'on' if PAPER_DEFAULTS['ema_warmup'] else 'off'}]",
        show_default=False,
    ),
]
LabelDropout = Annotated[
    float | None,
    typer.Option(
        "--label-dropout",
        help=f"Probability of the null label, for CFG [{_P['label_dropout']}]",
    ),
]
Loss = Annotated[
    str | None, typer.Option("--loss", help="mse | hybrid [hybrid if the model learns sigma]")
]
LogEvery = Annotated[int, typer.Option("--log-every", help="Steps per CSV row (loss averaged)")]
CkptMinutes = Annotated[
    float,
    typer.Option("--ckpt-minutes", help="A checkpoint at least this often (minutes of training)"),
]


def train(
    model: Model,
    image_size: o.ImageSize,
    steps: Steps,
    data: o.Data = o.default(TrainConfig, "data"),
    batch_size: o.BatchSize = o.default(TrainConfig, "batch_size"),
    out: RunDir = None,
    resume: Resume = False,
    init_from: InitFrom = None,
    init_weights: o.InitWeights = o.default(TrainConfig, "init_weights"),
    lr: o.Lr = None,
    weight_decay: o.WeightDecay = None,
    beta1: Beta1 = None,
    beta2: Beta2 = None,
    adam_eps: AdamEps = None,
    warmup: o.Warmup = None,
    grad_clip: GradClip = None,
    ema_decay: o.EmaDecay = None,
    ema_warmup: EmaWarmup = None,
    label_dropout: LabelDropout = None,
    dtype: o.Dtype = None,
    seed: o.Seed = None,
    schedule: o.Schedule = None,
    loss: Loss = None,
    vae: o.Vae = None,
    device: o.Device = o.default(TrainConfig, "device"),
    scan_backend: o.ScanBackend = o.default(TrainConfig, "scan_backend"),
    attn_backend: o.AttnBackend = o.default(TrainConfig, "attn_backend"),
    conv_backend: o.ConvBackend = o.default(TrainConfig, "conv_backend"),
    compile: o.Compile = False,
    num_workers: o.NumWorkers = o.default(TrainConfig, "num_workers"),
    log_every: LogEvery = o.default(TrainConfig, "log_every"),
    ckpt_every: o.CkptEvery = None,
    ckpt_minutes: CkptMinutes = o.default(TrainConfig, "ckpt_minutes"),
    progress: o.Progress = o.default(TrainConfig, "progress"),
) -> None:
    given = {k: v for k, v in locals().items() if k not in ("beta1", "beta2", "compile", "out")}
    from dimbench.train.trainer import train as run_training

    cfg = TrainConfig(  # the options are TrainConfig's fields, but for these four
        **given,
        betas=betas(beta1, beta2),
        compile="inductor" if compile else "eager",
        out=str(out if out is not None else default_out(model, image_size)),
    )
    summary = run_training(cfg)
    if summary["is_main"]:
        typer.echo(
            f"trained {cfg.model} to step {summary['steps']}: loss {summary['loss']:.4f}, "
            f"{summary['steps_per_s']:.2f} steps/s -> {summary['out']}"
        )


def betas(beta1: float | None, beta2: float | None) -> tuple[float, float] | None:
    """AdamW's betas from --beta1 / --beta2, the paper's for the one not given; None: neither."""
    if beta1 is None and beta2 is None:
        return None
    paper = PAPER_DEFAULTS["betas"]
    return (paper[0] if beta1 is None else beta1, paper[1] if beta2 is None else beta2)


def default_out(model: str, image_size: int) -> Path:
    """``runs/train-DiM-T_2-32px`` for ``--model DiM-T/2 --image-size 32``."""
    return Path("runs") / f"train-{model.replace('/', '_')}-{image_size}px"


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train)
