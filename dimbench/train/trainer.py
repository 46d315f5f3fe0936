"""The diffusion trainer shared by DiM and the baselines.

AdamW (the paper's betas and epsilon), linear warm-up then a constant learning rate, gradient
clipping, timm's ModelEmaV3, optional bf16 autocast, label dropout for classifier-free guidance,
DistributedDataParallel under torchrun, and exact resume.

Determinism: every random draw of a step (timesteps, noise, label dropout, VAE posterior noise)
comes from a generator seeded by (seed, step) for the whole global batch, and each rank takes its
slice; the data order and augmentations come from ``SampleStream`` keyed by stream position. So
a resumed run repeats an uninterrupted one bit for bit on the CPU, and N ranks with a global
batch B follow the 1-process trajectory with batch B up to float reduction order.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from dimbench.diffusion.losses import LOSSES, training_losses
from dimbench.diffusion.schedule import SCHEDULES, NoiseSchedule
from dimbench.errors import Interrupted, UsageError
from dimbench.models.dim_official import check_official_fits
from dimbench.paths import writable_dir
from dimbench.registry import get_model
from dimbench.threads import omp_policy_in_effect
from dimbench.train import distributed as D
from dimbench.train.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    check_compatible,
    load_checkpoint,
    load_weights,
    model_meta,
    remove_stale_temp_files,
    rng_state,
    set_rng_state,
)
from dimbench.train.config import TrainConfig
from dimbench.train.data import SampleStream, StepBatches, build_dataset, mix_seed
from dimbench.train.ema import make_ema
from dimbench.train.vae import VAE_CHANNELS, VAE_DOWNSAMPLE

LOG_NAME = "log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "wall_time", "images_seen", "flops", "grad_norm")
STEP_STREAM = 0x57E9  # salt of the per-step generator


def build_model(
    name: str,
    image_size: int,
    downsample: int,
    overrides: dict,
    scan_backend: str = "auto",
    attn_backend: str = "auto",
    device: torch.device | str | None = None,
) -> nn.Module:
    """``registry.create_model`` with the CLI's errors: unknown name / bad size -> UsageError."""
    from dimbench.registry import UnknownModelError, create_model

    try:
        model = create_model(
            name,
            image_size,
            device=device,
            scan_backend=scan_backend,
            attn_backend=attn_backend,
            downsample=downsample,
            **overrides,
        )
    except UnknownModelError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(f"{name} at {image_size} px: {e}") from None
    # The trainer drops labels itself (seeded per step, the same for every model); DiT's
    # official label embedder would drop them a second time inside forward. Its null row stays.
    embedder = getattr(model, "y_embedder", None)
    if hasattr(embedder, "dropout_prob"):
        embedder.dropout_prob = 0.0
    return model


def check_backends(scan_backend: str, attn_backend: str, device: torch.device) -> None:
    """Refuse a kernel backend that does not exist or cannot run on ``device`` (UsageError)."""
    from dimbench.ops.attention import resolve_attention_backend
    from dimbench.ops.scan import resolve_backend

    try:
        resolve_backend(scan_backend, device)
        resolve_attention_backend(attn_backend, torch.empty(0, device="meta"))
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """All parameters with weight decay, except those the model's ``no_weight_decay()`` names
    (timm's convention; DiM lists its position embedding, pad and split tokens)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class Trainer:
    """Build everything a run needs from a ``TrainConfig``; ``fit()`` trains."""

    def __init__(self, cfg: TrainConfig, dist: D.DistInfo | None = None):
        cfg.validate()
        self.dist = dist or D.setup(cfg.device)
        self.device = self.dist.device
        check_backends(cfg.scan_backend, cfg.attn_backend, self.device)
        self.out = Path(cfg.out)
        if self.dist.is_main:
            writable_dir(self.out)
            remove_stale_temp_files(self.out)
        ckpt_path = self.out / CHECKPOINT_NAME
        resume_ckpt = None
        if cfg.resume:
            resume_ckpt = load_checkpoint(ckpt_path)
            if "config" not in resume_ckpt["meta"]:  # released weights have no run to continue
                raise UsageError(
                    f"{ckpt_path} holds released weights, not a training run: start from them "
                    "with --init-from in a new --out"
                )
            cfg = cfg.merged_with_checkpoint(resume_ckpt["meta"]["config"])
        else:
            if ckpt_path.exists():
                load_checkpoint(ckpt_path, mmap=True)  # an unreadable one: say so, not "resume"
                raise UsageError(
                    f"{self.out} already holds a checkpoint: pass --resume to continue it, "
                    "or choose another --out"
                )
            cfg = cfg.with_defaults()
        self.cfg = cfg
        if cfg.batch_size % self.dist.world_size:
            raise UsageError(
                f"--batch-size {cfg.batch_size} does not split over {self.dist.world_size} ranks"
            )
        self.local_batch = cfg.batch_size // self.dist.world_size

        # data: pixels, pre-extracted latents, or pixels encoded by a VAE on the fly
        self.dataset, self.data_info = build_dataset(cfg.data, cfg.image_size, VAE_DOWNSAMPLE)
        self.vae = None
        if self.data_info.latent:
            channels, downsample = self.data_info.channels, VAE_DOWNSAMPLE
        elif cfg.vae:
            from dimbench.train.vae import load_vae

            self.vae = load_vae(cfg.vae, self.device)
            channels, downsample = VAE_CHANNELS, VAE_DOWNSAMPLE
        else:
            channels, downsample = 3, 1
        self.downsample = downsample

        # model (same seed on every rank: identical initial weights)
        overrides = {"in_channels": channels, **cfg.extra}
        probe = build_model(cfg.model, cfg.image_size, downsample, overrides, device="meta")
        n_cls = self.data_info.num_classes
        if n_cls is not None and n_cls > probe.num_classes:
            overrides["num_classes"] = n_cls
        self.model_overrides = overrides
        torch.manual_seed(cfg.seed)
        self.model = build_model(
            cfg.model,
            cfg.image_size,
            downsample,
            overrides,
            cfg.scan_backend,
            cfg.attn_backend,
            device=self.device,
        )
        self.meta = model_meta(self.model, downsample)
        if cfg.schedule is None:
            cfg.schedule = get_model(cfg.model).schedule
        if cfg.loss is None:
            cfg.loss = "hybrid" if self.meta["learn_sigma"] else "mse"
        if cfg.schedule not in SCHEDULES:
            raise UsageError(f"--schedule {cfg.schedule!r}: valid: {', '.join(SCHEDULES)}")
        if cfg.loss not in LOSSES:
            raise UsageError(f"--loss {cfg.loss!r}: valid: {', '.join(LOSSES)}")
        if cfg.loss == "hybrid" and not self.meta["learn_sigma"]:
            raise UsageError(
                f"--loss hybrid needs a model with learned sigma; {cfg.model} has none"
            )
        self.schedule = NoiseSchedule(cfg.schedule)

        # optimisation
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LinearLR(
            self.optimizer,
            start_factor=1.0 / max(1, cfg.warmup),
            end_factor=1.0,
            total_iters=max(1, cfg.warmup - 1),
        )  # step k (1-based) trains with lr * min(k / warmup, 1), then lr
        self.step = 0
        self.samples_seen = 0
        self.wall_time = 0.0
        # losses since the last log row (sum, count): checkpointed, so a run resumed between
        # two log rows writes the same rows as an uninterrupted one
        self._loss_window: list = [torch.zeros((), device=self.device), 0]
        if cfg.init_from and resume_ckpt is None:
            self._init_from(cfg.init_from, cfg.init_weights)
        self.ema = make_ema(self.model, cfg.ema_decay, cfg.ema_warmup)
        if resume_ckpt is not None:
            self._restore(resume_ckpt, ckpt_path)
        self.net = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.flops_per_step = self._train_flops() if self.dist.is_main else None

    # ---- checkpoints ----------------------------------------------------------------------

    def checkpoint_meta(self) -> dict:
        return {
            **self.meta,
            "image_size": [self.cfg.image_size, self.cfg.image_size],
            "model_overrides": self.model_overrides,
            "schedule": self.cfg.schedule,
            "loss": self.cfg.loss,
            "latent": self.downsample != 1,
            "latent_scale": self.cfg.latent_scale,
            "vae": self.cfg.vae,
            "data": self.cfg.data,
            "data_kind": self.data_info.kind,
            "data_classes": self.data_info.num_classes,
            "config": self.cfg.to_dict(),
        }

    def state_dict(self) -> dict:
        return {
            "meta": self.checkpoint_meta(),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "wall_time": self.wall_time,
            "rng": rng_state(),
        }

    def save(self) -> Path | None:
        """Rank 0 writes ``out/checkpoint.pt`` atomically; every rank waits for it."""
        path = self.out / CHECKPOINT_NAME
        # the ranks' mean of their loss-window sums: every rank resumes from it (see fit)
        total, count = self._loss_window
        window = [float(D.all_reduce_mean(torch.as_tensor(total), self.dist)), count]
        if self.dist.is_main:
            atomic_save({**self.state_dict(), "loss_window": window}, path)
        D.barrier(self.dist)
        return path

    def _restore(self, ckpt: dict, path: Path) -> None:
        expected = {**self.meta, "image_size": [self.cfg.image_size] * 2}
        check_compatible(ckpt["meta"], expected, path)
        load_weights(self.model, ckpt["model"], str(path))
        load_weights(self.ema.module, ckpt["ema"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.samples_seen = int(ckpt["samples_seen"])
        self.wall_time = float(ckpt["wall_time"])
        total, count = ckpt.get("loss_window", (0.0, 0))
        self._loss_window = [torch.tensor(float(total), device=self.device), int(count)]
        set_rng_state(ckpt["rng"])

    def _init_from(self, path: str, which: str) -> None:
        """Weak-to-strong: this model's weights from a checkpoint of the same architecture at
        another resolution (the model resizes its position embedding while loading)."""
        src = load_checkpoint(path)
        if "official" in src["meta"]:  # a released DiM file: its shapes decide, not its name
            check_official_fits(src["meta"], self.model, path)
        else:
            check_compatible(src["meta"], self.meta, path, allow_resize=True)
        load_weights(self.model, src[which], f"--init-from {path}")

    # ---- the loop -------------------------------------------------------------------------

    def _train_flops(self) -> int | None:
        """Training FLOPs of one global step (forward + backward), or None if not countable."""
        try:
            from dimbench.measure import count_flops

            counted = count_flops(
                self.cfg.model,
                self.cfg.image_size,
                batch_size=self.cfg.batch_size,
                mode="train",
                downsample=self.downsample,
                **self.model_overrides,
            )
            return int(counted["flops"])
        except Exception:  # noqa: BLE001 - the FLOP column is informative, never fatal
            return None

    def _step_randomness(self, step: int, x_shape: tuple[int, ...], latent_shape=None):
        """This rank's slice of the step's timesteps, noise, label-drop mask (and VAE noise)."""
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, STEP_STREAM, step))
        b = self.cfg.batch_size
        rows = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=g)[rows]
        drop = (torch.rand(b, generator=g) < self.cfg.label_dropout)[rows]
        vae_noise = None
        if latent_shape is not None:
            vae_noise = torch.randn((b, *latent_shape), generator=g)[rows]
            x_shape = latent_shape
        noise = torch.randn((b, *x_shape), generator=g)[rows]
        dev = self.device
        return (
            t.to(dev),
            noise.to(dev),
            drop.to(dev),
            None if vae_noise is None else vae_noise.to(dev),
        )

    def _loader(self, steps: int) -> DataLoader:
        stream = SampleStream(len(self.dataset), self.cfg.seed)
        batches = StepBatches(
            stream,
            self.samples_seen,
            self.cfg.batch_size,
            self.dist.rank,
            self.dist.world_size,
            steps,
        )
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on this rank's batch; returns (mean loss, grad norm)."""
        cfg = self.cfg
        n_cls = self.model.num_classes
        if int(y.max()) >= n_cls:  # checked on the host, before an out-of-range lookup
            raise UsageError(f"label {int(y.max())} out of range for {cfg.model} ({n_cls} classes)")
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        latent_shape = None
        if self.vae is not None:
            h, w = x.shape[-2] // VAE_DOWNSAMPLE, x.shape[-1] // VAE_DOWNSAMPLE
            latent_shape = (VAE_CHANNELS, h, w)
        t, noise, drop, vae_noise = self._step_randomness(
            self.step, tuple(x.shape[1:]), latent_shape
        )
        if self.vae is not None:
            from dimbench.train.vae import encode

            x = encode(self.vae, x, vae_noise, cfg.latent_scale)
        y = torch.where(drop, torch.full_like(y, self.model.num_classes), y)

        self.net.train()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        )
        with autocast:
            loss = training_losses(self.net, x, y, self.schedule, t, noise, cfg.loss).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip and cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.zeros((), device=self.device)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1
        self.samples_seen += cfg.batch_size
        self.ema.update(self.model, step=self.step)
        return loss.detach(), grad_norm.detach()

    def fit(
        self,
        stop_at: int | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> dict:
        """Train to ``cfg.steps`` (or stop early after step ``stop_at``, without a final
        checkpoint: a simulated interruption) and return a summary. ``on_step(trainer)`` runs
        after every step.

        Checkpoints: every ``cfg.checkpoint_interval()`` steps, after ``cfg.ckpt_minutes`` of
        training since the last one, at the end, and on SIGINT/SIGTERM, after which ``fit``
        raises ``Interrupted`` (exit 130/143). A second Ctrl-C stops without saving.
        """
        cfg = self.cfg
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        every = cfg.checkpoint_interval()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps(
                    {**self.checkpoint_meta(), "omp_wait_policy": omp_policy_in_effect()},
                    indent=2,
                    default=str,
                )
                + "\n"
            )
        log = CsvLog(self.out / LOG_NAME, self.step) if self.dist.is_main else None
        progress = _Progress(cfg.steps, self.step, enabled=cfg.progress and self.dist.is_main)
        start_step, start = self.step, time.perf_counter()
        base_wall = self.wall_time
        last_loss, grad_norm = math.nan, torch.zeros(())
        last_save = time.monotonic()
        stop = _StopRequest()
        with progress, stop:
            for x, y in self._loader(max(0, end - self.step)):
                loss, grad_norm = self.train_step(x, y)
                self._loss_window[0] += loss
                self._loss_window[1] += 1
                self.wall_time = base_wall + time.perf_counter() - start
                rate = (self.step - start_step) / max(1e-9, time.perf_counter() - start)
                if self.step % cfg.log_every == 0 or self.step == end:
                    total, count = self._loss_window
                    last_loss = float(D.all_reduce_mean(total / count, self.dist))
                    self._loss_window = [torch.zeros((), device=self.device), 0]
                    if log is not None:
                        log.write(self._log_row(last_loss, float(grad_norm)))
                progress.update(self.step, last_loss, rate)
                if on_step is not None:
                    on_step(self)
                overdue = time.monotonic() - last_save >= cfg.ckpt_minutes * 60
                signum, overdue = D.agree_max(self.dist, stop.signum, int(overdue))
                if signum or overdue or self.step % every == 0 or self.step == cfg.steps:
                    self.save()
                    last_save = time.monotonic()
                if signum:
                    if log is not None:
                        log.close()
                    raise Interrupted(
                        f"{signal.Signals(signum).name} at step {self.step} of {cfg.steps}: "
                        f"checkpoint saved in {self.out}; continue with --resume",
                        signum,
                    )
        elapsed = time.perf_counter() - start
        if log is not None:
            log.close()
        done = self.step - start_step
        return {
            "steps": self.step,
            "loss": last_loss,
            "steps_per_s": done / elapsed if elapsed > 0 else math.nan,
            "wall_time": self.wall_time,
            "out": str(self.out),
            "is_main": self.dist.is_main,
        }

    def _log_row(self, loss: float, grad_norm: float) -> dict:
        flops = self.flops_per_step * self.step if self.flops_per_step is not None else ""
        return {
            "step": self.step,
            "loss": f"{loss:.6f}",
            "lr": f"{self.last_lr:.6g}",
            "wall_time": f"{self.wall_time:.3f}",
            "images_seen": self.samples_seen,
            "flops": flops,
            "grad_norm": f"{grad_norm:.4f}",
        }


class _StopRequest:
    """SIGINT/SIGTERM while training: remember the signal so the loop saves a checkpoint after
    the current step and stops; a second signal stops at once, without saving."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
            "(again to stop without saving)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class CsvLog:
    """``log.csv``, appended row by row; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        rows = []
        if path.exists() and resume_step > 0:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _Progress:
    """A rich progress bar with loss, steps/s and ETA (a no-op when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]:.2f} steps/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=done, loss=math.nan, rate=0.0)

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate)


def train(cfg: TrainConfig) -> dict:
    """Run one training job (the body of ``dimbench train``), torchrun-aware."""
    dist = D.setup(cfg.device)
    try:
        return Trainer(cfg, dist).fit()
    finally:
        D.cleanup()
