"""The train-compare runner: trains each backbone of a :class:`CompareConfig` with the shared
trainer, evaluates at regular points of the budget, and appends one CSV row per (model, point).

Layout of ``--out``::

    train_compare.csv     one row per model and evaluation point (columns: ``COLUMNS``)
    train_compare.json    the plan (everything that defines the results), model sizes and
                          what --match chose, evaluation settings, machine, one entry per run
    train_compare.png/svg held-out loss and FID against steps, wall time and training FLOPs
    summary.md            the numbers at the end of the budget
    <model>/checkpoint.pt the trainer's checkpoint (``dimbench sample --ckpt`` reads it)

Resume: a rerun with the same ``--out`` and settings skips the points that have rows and
continues each model from its checkpoint (saved at every point before evaluating, and every
``ckpt_every`` steps). Training is the trainer's own ``train_step``, called here step by step so
that a point can fall at any step or second; data order, noise and timesteps come from the
trainer's (seed, step)-keyed streams, so they are the same for every model and after a resume.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dimbench.errors import UsageError
from dimbench.paths import writable_dir
from dimbench.train import distributed as D
from dimbench.train.checkpoint import CHECKPOINT_NAME
from dimbench.train.compare import (
    Budget,
    CompareConfig,
    PlannedModel,
    match_summary,
    parse_budget,
    plan_models,
    resolve,
)
from dimbench.train.data import SampleStream, StepBatches, build_dataset, mix_seed
from dimbench.train.evaluate import (
    HeldOutSet,
    QualityProbe,
    build_heldout,
    heldout_loss,
    timestep_grid,
    to_uint8,
)
from dimbench.train.trainer import check_backends

FORMAT = "dimbench-train-compare-1"
CSV_NAME = "train_compare.csv"
META_NAME = "train_compare.json"
HELDOUT_SALT = 0x4E1D
REF_SALT = 0x4EF0
GEN_SEED_SALT = 0x6E5D
SECONDS_WARMUP = 100  # default warm-up steps under a time budget (the step count is unknown)

COLUMNS: dict[str, str] = {
    "model": "registry name",
    "label": "name with the width and depth trained (w..., d...)",
    "family": "dim | dit | uvit (the model's registered family, lower case)",
    "width": "hidden width trained",
    "depth": "blocks (U-ViT: in + out blocks, the mid-block on top)",
    "params": "parameters",
    "gflops_per_image": "forward GFLOPs per image (2 per multiply-add, torch flop counter)",
    "point": "evaluation point: 0 = before training, then 1..evals over the budget",
    "budget_fraction": "point / evals",
    "step": "optimisation steps done",
    "images_seen": "training images seen (step x batch size)",
    "wall_seconds": "training wall time so far (data + steps; evaluation and checkpoints excluded)",
    "train_flops": "cumulative training FLOPs: step x (forward + backward FLOPs of one batch)",
    "train_loss": "mean training loss (epsilon MSE, label dropout) over the steps since the "
    "previous row (since the restart when a run resumed between points)",
    "heldout_loss": "held-out epsilon MSE, EMA weights, eval mode, true labels",
    "heldout_loss_raw": "the same with the raw (non-EMA) weights",
    "heldout_by_t": "held-out loss (EMA) per fixed timestep, JSON {t: loss}",
    "heldout_images": "held-out images (each at every timestep of the grid)",
    "fid": "FID of n_gen EMA samples against n_ref reference images (biased at small n)",
    "swd": "multi-scale sliced Wasserstein distance x1e3 (average over pyramid levels)",
    "n_gen": "generated samples behind fid / swd",
    "n_ref": "reference samples behind fid / swd",
    "sampler": "sampler of the quality samples (no guidance)",
    "sample_steps": "sampler steps",
    "eval_seconds": "time this row's evaluation took",
    "lr": "learning rate at the last step",
    "batch_size": "global batch size",
    "image_size": "image side in pixels",
    "budget": "the whole comparison's budget",
    "match": "--match mode (none | params | flops)",
    "seed": "seed of data order, noise and initialisation",
    "device": "device trained on",
    "world_size": "processes (torchrun ranks)",
    "device_name": "CPU or GPU model",
    "threads": "torch threads",
    "load_avg_1m": "1-minute load average when the row was written",
    "git_sha": "dimbench commit",
    "torch_version": "torch.__version__",
    "timestamp": "UTC time the row was written",
}


@dataclass(frozen=True)
class Point:
    """An evaluation point: index k of n; ``steps`` target (None under a time budget)."""

    index: int
    fraction: float
    steps: int | None
    seconds: float | None
    quality: bool


def evaluation_points(
    budget: Budget, spec: PlannedModel, evals: int, fid_every: int
) -> list[Point]:
    """Point 0 (before training), then ``evals`` points evenly over the budget in its unit."""
    if budget.unit == "seconds":
        total = None
    elif budget.unit == "steps":
        total = int(budget.value)
    else:
        total = math.floor(budget.value / spec.train_flops_per_step)
    if total is not None and total < evals:
        raise UsageError(
            f"--budget {budget} gives {spec.label} {total} steps, fewer than --evals {evals} "
            f"(one training step of it costs {spec.train_flops_per_step:.3g} FLOPs)"
        )
    points = [Point(0, 0.0, 0, 0.0 if total is None else None, False)]
    for k in range(1, evals + 1):
        f = k / evals
        if total is None:
            steps, seconds = None, budget.value * f
        elif budget.unit == "steps":
            steps, seconds = round(total * f), None
        else:  # FLOPs: the step at which this model has used a fraction f of the budget
            steps, seconds = min(total, round(budget.value * f / spec.train_flops_per_step)), None
        points.append(Point(k, f, steps, seconds, k % fid_every == 0 or k == evals))
    return points


class Excluding(Dataset):
    """A dataset without some indices (the held-out ones), keyed like the trainer's datasets."""

    def __init__(self, base: Dataset, excluded: set[int]):
        self.base = base
        self.indices = [i for i in range(len(base)) if i not in excluded]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        index, seed = key
        return self.base[(self.indices[index], seed)]


# ---- the CSV and the metadata file ----------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in COLUMNS})


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.7g}"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _plan(cfg: CompareConfig, budget: Budget, specs: list[PlannedModel], schedule: str) -> dict:
    """What defines the results: a rerun into the same --out must agree on all of it."""
    return {
        "preset": cfg.preset,
        "models": [{"name": s.name, "overrides": s.overrides} for s in specs],
        "data": cfg.data,
        "image_size": cfg.image_size,
        "budget": {"text": str(cfg.budget), "unit": budget.unit, "value": budget.value},
        "match": cfg.match,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "evals": cfg.evals,
        "fid_every": cfg.fid_every,
        "heldout": {"images": cfg.heldout_images, "timesteps": cfg.heldout_timesteps},
        "quality": {
            "metrics": list(cfg.metrics),
            "n_gen": cfg.fid_gen,
            "n_ref": cfg.fid_ref_count,
            "ref": cfg.fid_ref,
            "sampler": cfg.sampler,
            "steps": cfg.sample_steps,
            "inception_weights": cfg.inception_weights,
        },
        "objective": {"loss": "mse", "schedule": schedule},
        "recipe": {
            "optimizer": "AdamW",
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "betas": list(cfg.betas),
            "adam_eps": cfg.adam_eps,
            "warmup": cfg.warmup,
            "grad_clip": cfg.grad_clip,
            "ema_decay": cfg.ema_decay,
            "ema_warmup": cfg.ema_warmup,
            "label_dropout": cfg.label_dropout,
            "bf16": cfg.bf16,
        },
        "vae": cfg.vae,
    }


def _json_norm(obj):
    return json.loads(json.dumps(obj, default=str))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {vb!r} (now {va!r})")
    return out


# ---- one model --------------------------------------------------------------------------------


class ModelRun:
    """One backbone: its trainer (built on first use, resumed from its checkpoint), trained in
    chunks up to each point and evaluated there."""

    def __init__(self, comp: Comparison, spec: PlannedModel):
        self.comp = comp
        self.spec = spec
        self.dir = comp.out / spec.slug
        self.points = evaluation_points(comp.budget, spec, comp.cfg.evals, comp.cfg.fid_every)
        self.trainer = None
        self.loss_sum = None
        self.loss_steps = 0

    def pending(self) -> list[Point]:
        return [p for p in self.points if (self.spec.label, p.index) not in self.comp.done]

    def _build(self):
        from dimbench.train.config import TrainConfig
        from dimbench.train.trainer import Trainer

        cfg = self.comp.cfg
        total = self.points[-1].steps
        tc = TrainConfig(
            model=self.spec.name,
            data=cfg.data,
            image_size=cfg.image_size,
            steps=total if total else 10**9,
            batch_size=cfg.batch_size,
            out=str(self.dir),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            betas=tuple(cfg.betas),
            adam_eps=cfg.adam_eps,
            warmup=cfg.warmup,
            grad_clip=cfg.grad_clip,
            ema_decay=cfg.ema_decay,
            ema_warmup=cfg.ema_warmup,
            label_dropout=cfg.label_dropout,
            bf16=cfg.bf16,
            seed=cfg.seed,
            schedule=self.comp.schedule_name,
            loss="mse",
            vae=cfg.vae,
            resume=(self.dir / CHECKPOINT_NAME).is_file(),
            device=cfg.device,
            scan_backend=cfg.scan_backend,
            attn_backend=cfg.attn_backend,
            num_workers=cfg.num_workers,
            ckpt_every=cfg.ckpt_every,
            progress=False,
            extra=dict(self.spec.overrides),
        )
        trainer = Trainer(tc, self.comp.dist)
        trainer.dataset = self.comp.train_data  # the held-out indices are not trained on
        if self.comp.dist.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = {**trainer.checkpoint_meta(), "train_compare": self.spec.to_dict()}
            (self.dir / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        self.trainer = trainer
        self.loss_sum = torch.zeros((), device=trainer.device)
        self.loss_steps = 0
        return trainer

    def advance(self, point: Point, progress) -> None:
        """Train up to ``point`` (if its row is missing), checkpoint, evaluate, write the row."""
        if (self.spec.label, point.index) in self.comp.done:
            return
        tr = self.trainer or self._build()
        if point.steps is not None and tr.step > point.steps:
            raise UsageError(
                f"{self.dir / CHECKPOINT_NAME} is at step {tr.step}, past evaluation point "
                f"{point.index} (step {point.steps}) which has no row; delete {self.dir} to redo "
                "this model"
            )
        self._train_to(point, progress)
        tr.save()
        self.comp.evaluate(self, point)

    def _train_to(self, point: Point, progress) -> None:
        tr, cfg, dist = self.trainer, self.comp.cfg, self.comp.dist
        if point.steps is not None:
            n = point.steps - tr.step
            if n <= 0:
                return
        else:
            if tr.wall_time >= point.seconds:
                return
            n = 10**9  # until the clock says stop
        stream = SampleStream(len(self.comp.train_data), cfg.seed)
        batches = StepBatches(
            stream, tr.samples_seen, cfg.batch_size, dist.rank, dist.world_size, n
        )
        loader = DataLoader(
            self.comp.train_data,
            batch_sampler=batches,
            num_workers=cfg.num_workers,
            pin_memory=tr.device.type == "cuda",
        )
        cuda = tr.device.type == "cuda"
        start, base = time.perf_counter(), tr.wall_time
        for x, y in loader:
            loss, _ = tr.train_step(x, y)
            self.loss_sum += loss
            self.loss_steps += 1
            if cuda and point.seconds is not None:
                torch.cuda.synchronize(tr.device)
            tr.wall_time = base + time.perf_counter() - start
            # reading the loss syncs a GPU: there, only every 10 steps
            progress.advance(self, loss if not cuda or tr.step % 10 == 0 else None)
            if tr.step % cfg.ckpt_every == 0:
                paused = time.perf_counter()
                tr.save()
                start += time.perf_counter() - paused  # checkpoints are not training time
            if point.seconds is not None and self._time_is_up(point.seconds):
                break
        if cuda:
            torch.cuda.synchronize(tr.device)
            tr.wall_time = base + time.perf_counter() - start

    def _time_is_up(self, seconds: float) -> bool:
        up = torch.tensor(float(self.trainer.wall_time >= seconds))
        if self.comp.dist.enabled:  # every rank stops at the same step: rank 0's clock decides
            up = up.to(self.trainer.device)
            torch.distributed.broadcast(up, src=0)
        return bool(up.item())

    def take_train_loss(self) -> tuple[float | None, int]:
        if not self.loss_steps:
            return None, 0
        mean = D.all_reduce_mean(self.loss_sum / self.loss_steps, self.comp.dist)
        n = self.loss_steps
        self.loss_sum.zero_()
        self.loss_steps = 0
        return float(mean), n

    def close(self) -> None:
        self.trainer = None


# ---- the comparison ---------------------------------------------------------------------------


class Comparison:
    def __init__(self, cfg: CompareConfig, dist: D.DistInfo):
        from dimbench.train.vae import VAE_CHANNELS, VAE_DOWNSAMPLE

        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.out = Path(cfg.out)
        self.budget = parse_budget(cfg.budget)
        self.dataset, self.info = build_dataset(cfg.data, cfg.image_size, VAE_DOWNSAMPLE)
        if self.info.latent:
            channels, self.downsample = self.info.channels, VAE_DOWNSAMPLE
        elif cfg.vae:
            channels, self.downsample = VAE_CHANNELS, VAE_DOWNSAMPLE
        else:
            channels, self.downsample = 3, 1
        self.channels = channels
        self.specs = plan_models(cfg, channels, self.downsample, self.info.num_classes)
        self.schedule_name = cfg.schedule or ("linear" if self.downsample == 1 else "scaled_linear")
        if cfg.warmup is None:
            cfg.warmup = self._default_warmup()
        from dimbench.diffusion.schedule import NoiseSchedule

        self.schedule = NoiseSchedule(self.schedule_name)
        self.plan = _json_norm(_plan(cfg, self.budget, self.specs, self.schedule_name))
        self.csv = self.out / CSV_NAME
        self.meta_path = self.out / META_NAME
        self._check_existing()
        self.heldout, self.train_data = self._heldout()
        self.num_classes = self.info.num_classes or self._probe_classes()
        self.probe = self._quality_probe() if cfg.metrics else None
        existing = read_rows(self.csv)
        # rank 0's view of what is done, so that every rank skips the same points
        self.done = D.broadcast_object({(r["label"], int(r["point"])) for r in existing}, dist)
        self.last_rows = {r["label"]: r for r in existing}
        self.rows: list[dict] = []
        from dimbench.measure.metadata import run_metadata

        self.machine = run_metadata(str(self.device))

    # -- setup

    def _default_warmup(self) -> int:
        if self.budget.unit == "seconds":
            return SECONDS_WARMUP
        shortest = min(
            evaluation_points(self.budget, s, self.cfg.evals, self.cfg.fid_every)[-1].steps
            for s in self.specs
        )
        return max(1, min(5000, shortest // 10))

    def _probe_classes(self) -> int:
        from dimbench.registry import create_model

        s = self.specs[0]
        m = create_model(
            s.name, self.cfg.image_size, device="meta", downsample=self.downsample, **s.overrides
        )
        return int(m.num_classes)

    def _check_existing(self) -> None:
        if not self.meta_path.is_file():
            if read_rows(self.csv):
                raise UsageError(f"{self.csv} exists without {META_NAME}: choose another --out")
            return
        saved = json.loads(self.meta_path.read_text())
        if saved.get("format") != FORMAT:
            raise UsageError(f"{self.meta_path} is not a train-compare record")
        diffs = _differences(self.plan, saved.get("plan", {}))
        if diffs:
            raise UsageError(
                f"{self.out} holds a comparison with other settings ({'; '.join(diffs[:4])}): "
                "rerun with the same settings to resume it, or choose another --out"
            )

    def _heldout(self) -> tuple[HeldOutSet, Dataset]:
        """Fixed held-out images: fresh crops for the bundled photos (ten photographs: there
        is nothing to hold out, the crops are new); otherwise a seeded choice of samples that
        training never sees."""
        cfg = self.cfg
        n = cfg.heldout_images
        ts = timestep_grid(cfg.heldout_timesteps, self.schedule.num_timesteps)
        if self.info.kind == "photos":
            keys = [(i, mix_seed(cfg.seed, HELDOUT_SALT, i)) for i in range(n)]
            what = f"{n} fresh random crops of the {self.info.description}"
            train = self.dataset
        else:
            if n >= len(self.dataset):
                raise UsageError(
                    f"--heldout-images {n}: the data has only {len(self.dataset)} samples"
                )
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, HELDOUT_SALT))
            chosen = torch.randperm(len(self.dataset), generator=g)[:n].tolist()
            keys = [(i, mix_seed(cfg.seed, HELDOUT_SALT, i)) for i in chosen]
            what = f"{n} samples of {cfg.data} excluded from training"
            train = Excluding(self.dataset, set(chosen))
        held = self._heldout_in_model_space(keys, ts, what)
        return held, train

    def _heldout_in_model_space(self, keys, ts, what) -> HeldOutSet:
        held = build_heldout(self.dataset, keys, ts, self.cfg.seed, what)
        if self.cfg.vae and not self.info.latent:  # pixels encoded by the VAE, as training does
            from dimbench.train.vae import encode, load_vae

            vae = load_vae(self.cfg.vae, self.device)
            g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, HELDOUT_SALT, 1))
            h, w = (s // self.downsample for s in held.x0.shape[-2:])
            noise = torch.randn((held.size, self.channels, h, w), generator=g)
            x0 = encode(vae, held.x0.to(self.device), noise.to(self.device), 0.18215).cpu()
            noise_t = torch.randn((len(ts), *x0.shape), generator=g)
            held = HeldOutSet(x0, held.y, held.timesteps, noise_t, what)
        return held

    def _quality_probe(self) -> QualityProbe | None:
        cfg = self.cfg
        h = w = cfg.image_size // self.downsample
        probe = QualityProbe(
            metrics=tuple(cfg.metrics),
            num_gen=cfg.fid_gen,
            shape=(self.channels, h, w),
            num_classes=self.info.num_classes or self.num_classes,
            seed=mix_seed(cfg.seed, GEN_SEED_SALT),
            sampler=cfg.sampler,
            steps=cfg.sample_steps,
            batch_size=cfg.eval_batch_size,
            bf16=bool(cfg.bf16),
        )
        if self.downsample != 1:
            if not cfg.vae:
                probe.notes.append("no --vae: latent samples cannot be decoded, no FID/SWD")
                probe.metrics = ()
                return probe
            from dimbench.train.vae import decode, load_vae

            vae = load_vae(cfg.vae, self.device)
            probe.decoder = lambda z: decode(vae, z, 0.18215)
        ref = cfg.fid_ref
        if ref is None:
            if self.info.latent:
                probe.notes.append("latent data and no --fid-ref: no reference images, no FID")
                probe.metrics = ()
                return probe
            ref = self._reference_images(cfg.fid_ref_count)
            probe.ref_images = ref
        if "fid" in probe.metrics:
            from dimbench.metrics.fid import default_cache_dir, reference_stats
            from dimbench.metrics.inception import load_extractor

            probe.extractor = load_extractor(cfg.inception_weights, self.device)
            cache = cfg.cache_dir or default_cache_dir()
            if self.dist.is_main:  # only rank 0 computes FID
                stats = reference_stats(
                    ref, probe.extractor, cache, num=cfg.fid_ref_count,
                    progress="reference features" if cfg.progress else False,
                )  # fmt: skip
                probe.ref_stats, probe.ref_count = stats, stats.n
        if "swd" in probe.metrics and probe.ref_images is None:
            probe.notes.append("swd needs reference images, not statistics: skipped")
            probe.metrics = tuple(m for m in probe.metrics if m != "swd")
        if probe.ref_count is None and probe.ref_images is not None:
            probe.ref_count = len(probe.ref_images)
        return probe

    def _reference_images(self, n: int) -> torch.Tensor:
        """uint8 reference images from the data: fresh crops (photos) or a seeded sample."""
        cfg = self.cfg
        if self.info.kind == "photos":
            keys = [(i, mix_seed(cfg.seed, REF_SALT, i)) for i in range(n)]
            base = self.dataset
        else:
            base = self.train_data
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, REF_SALT))
            idx = torch.randperm(len(base), generator=g)[:n].tolist()
            keys = [(i, mix_seed(cfg.seed, REF_SALT, i)) for i in idx]
        return to_uint8(torch.stack([base[k][0] for k in keys]))

    # -- running

    def write_meta(self, finished: bool) -> None:
        if not self.dist.is_main:
            return
        saved = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        runs = saved.get("runs", [])
        if not finished or not runs or runs[-1].get("finished"):
            runs.append({"command": self.cfg.command, "started": _utc(), **self.machine})
        if finished:
            runs[-1]["finished"] = _utc()
        meta = {
            "format": FORMAT,
            "plan": self.plan,
            "models": [s.to_dict() for s in self.specs],
            "matching": match_summary(self.specs),
            "heldout": {
                "description": self.heldout.description,
                "images": self.heldout.size,
                "timesteps": self.heldout.timesteps,
                "noise": "one fixed draw per (timestep, image), seeded by the run seed",
                "weights": "heldout_loss: EMA weights; heldout_loss_raw: raw weights",
                "labels": "true labels, no label dropout, eval mode",
            },
            "quality": self.probe.describe() if self.probe else None,
            "schedule": self.schedule_name,
            "warmup": self.cfg.warmup,
            "order": self.cfg.order,
            "runs": runs,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        tmp.replace(self.meta_path)

    def evaluate(self, run: ModelRun, point: Point) -> None:
        tr, cfg = run.trainer, self.cfg
        start = time.perf_counter()
        ema = tr.ema.module
        bf16 = bool(cfg.bf16)
        bs = cfg.eval_batch_size
        held = heldout_loss(ema, self.schedule, self.heldout, tr.device, bs, bf16, self.dist)
        raw = heldout_loss(tr.model, self.schedule, self.heldout, tr.device, bs, bf16, self.dist)
        quality = {}
        if point.quality and self.probe is not None and self.probe.metrics:
            quality = self.probe(ema, self.schedule, tr.device, self.dist)
        train_loss, _ = run.take_train_loss()
        if not self.dist.is_main:
            return
        s = run.spec
        row = {
            "model": s.name,
            "label": s.label,
            "family": s.family,
            "width": s.width,
            "depth": s.depth,
            "params": s.params,
            "gflops_per_image": s.gflops,
            "point": point.index,
            "budget_fraction": point.fraction,
            "step": tr.step,
            "images_seen": tr.samples_seen,
            "wall_seconds": tr.wall_time,
            "train_flops": s.train_flops_per_step * tr.step,
            "train_loss": train_loss,
            "heldout_loss": held["loss"],
            "heldout_loss_raw": raw["loss"],
            "heldout_by_t": {str(t): round(v, 6) for t, v in held["by_t"].items()},
            "heldout_images": self.heldout.size,
            "fid": quality.get("fid"),
            "swd": quality.get("swd"),
            "n_gen": quality.get("n_gen") if quality else None,
            "n_ref": quality.get("n_ref") if quality else None,
            "sampler": cfg.sampler if quality else None,
            "sample_steps": cfg.sample_steps if quality else None,
            "eval_seconds": time.perf_counter() - start,
            "lr": getattr(tr, "last_lr", tr.optimizer.param_groups[0]["lr"]) if tr.step else 0.0,
            "batch_size": cfg.batch_size,
            "image_size": cfg.image_size,
            "budget": str(self.budget),
            "match": cfg.match,
            "seed": cfg.seed,
            "device": str(tr.device),
            "world_size": self.dist.world_size,
            "device_name": self.machine["device_name"],
            "threads": torch.get_num_threads(),
            "load_avg_1m": _load_avg(),
            "git_sha": self.machine["git_sha"],
            "torch_version": torch.__version__,
            "timestamp": _utc(),
        }
        append_row(self.csv, row)
        self.done.add((s.label, point.index))
        self.rows.append(row)
        self.progress.report(row)

    def run(self) -> dict:
        cfg = self.cfg
        console = _console(self.dist.is_main)
        console.print(f"train-compare: {len(self.specs)} models, budget {self.budget}, "
                      f"batch {cfg.batch_size}, {cfg.image_size} px, data {cfg.data}")  # fmt: skip
        for line in match_summary(self.specs):
            console.print(f"  {line}")
        if self.probe is not None:
            for note in self.probe.notes:
                console.print(f"  note: {note}")
        self.write_meta(finished=False)
        runs = [ModelRun(self, s) for s in self.specs]
        self.progress = _Progress(runs, self.budget, cfg.progress and self.dist.is_main, console)
        with self.progress:
            if cfg.order == "interleaved":
                for k in range(cfg.evals + 1):
                    for r in runs:
                        r.advance(r.points[k], self.progress)
            else:
                for r in runs:
                    for p in r.points:
                        r.advance(p, self.progress)
                    r.close()
        for r in runs:
            r.close()
        self.write_meta(finished=True)
        figures = []
        if self.dist.is_main:
            from dimbench.plots_train import plot_train_compare, summary_markdown

            rows = read_rows(self.csv)
            figures = plot_train_compare(self.out)
            (self.out / "summary.md").write_text(summary_markdown(rows, self.meta_path))
            _summary_table(console, rows)
        D.barrier(self.dist)
        return {"out": str(self.out), "csv": str(self.csv), "figures": [str(f) for f in figures]}


def run_compare(cfg: CompareConfig) -> dict:
    """Resolve the preset, then run (or resume) the comparison; torchrun-aware."""
    cfg = resolve(cfg)
    if not cfg.command:
        cfg.command = " ".join(["dimbench", *sys.argv[1:]])
    dist = D.setup(cfg.device)
    check_backends(cfg.scan_backend, cfg.attn_backend, dist.device)
    if dist.is_main:
        writable_dir(cfg.out)
    try:
        return Comparison(cfg, dist).run()
    finally:
        D.cleanup()


# ---- display ----------------------------------------------------------------------------------


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load_avg() -> float | None:
    from dimbench.measure.metadata import load_average

    return load_average()


def _console(enabled: bool):
    from rich.console import Console

    console = Console(quiet=not enabled, highlight=False)
    if not console.is_terminal:  # a log file: wide enough for the summary table
        console.width = 150
    return console


class _Progress:
    """One rich progress bar per model (steps, or training seconds under a time budget), the
    latest training loss, and one printed line per evaluation."""

    def __init__(self, runs: list[ModelRun], budget: Budget, enabled: bool, console):
        self.console = console
        self.enabled = enabled
        self.seconds = budget.unit == "seconds"
        self.bar = None
        self.tasks = {}
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%") if self.seconds else MofNCompleteColumn(),
            TextColumn("step {task.fields[step]:>6}  loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
        )
        for r in runs:
            total = budget.value if self.seconds else r.points[-1].steps
            done = [p for p in r.points if p not in r.pending()]
            last = r.comp.last_rows.get(r.spec.label, {})
            step = int(last.get("step", 0))
            completed = float(last.get("wall_seconds", 0)) if self.seconds else step
            self.tasks[id(r)] = self.bar.add_task(
                r.spec.label, total=total, completed=completed if done else 0, step=step, loss="-"
            )

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, run: ModelRun, loss: torch.Tensor | None) -> None:
        if self.bar is None:
            return
        tr = run.trainer
        fields = {"step": tr.step}
        if loss is not None:
            fields["loss"] = f"{float(loss):.4f}"
        done = tr.wall_time if self.seconds else tr.step
        self.bar.update(self.tasks[id(run)], completed=done, **fields)

    def report(self, row: dict) -> None:
        text = (
            f"{row['label']:<26} point {row['point']:>2}  step {row['step']:>6}  "
            f"held-out {row['heldout_loss']:.4f} (raw {row['heldout_loss_raw']:.4f})"
        )
        if row.get("train_loss") is not None:
            text += f"  train {row['train_loss']:.4f}"
        if row.get("fid") is not None:
            text += f"  FID {row['fid']:.1f} (n={row['n_gen']}/{row['n_ref']})"
        if row.get("swd") is not None:
            text += f"  SWD {row['swd']:.1f}"
        text += f"  [{row['wall_seconds']:.0f}s train, eval {row['eval_seconds']:.0f}s]"
        self.console.print(text)


def _summary_table(console, rows: list[dict]) -> None:
    from rich.table import Table

    last: dict[str, dict] = {}
    for r in rows:
        if r["label"] not in last or int(r["point"]) >= int(last[r["label"]]["point"]):
            last[r["label"]] = r
    fid_rows: dict[str, dict] = {}
    for r in rows:
        if r.get("fid"):
            fid_rows[r["label"]] = r
    table = Table(title="train-compare: end of the budget")
    for col in ("model", "params", "GFLOPs/img", "steps", "images", "train s", "train FLOPs",
                "train loss", "held-out (EMA)", "held-out (raw)", "FID (n)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, r in last.items():
        f = fid_rows.get(label)
        fid = f"{float(f['fid']):.1f} ({f['n_gen']}/{f['n_ref']})" if f else "-"
        table.add_row(
            label,
            f"{int(r['params']) / 1e6:.2f}M",
            f"{float(r['gflops_per_image']):.3g}",
            r["step"],
            r["images_seen"],
            f"{float(r['wall_seconds']):.0f}",
            f"{float(r['train_flops']):.3g}",
            f"{float(r['train_loss']):.4f}" if r.get("train_loss") else "-",
            f"{float(r['heldout_loss']):.4f}",
            f"{float(r['heldout_loss_raw']):.4f}",
            fid,
        )
    console.print(table)
