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

import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dimbench.compile import compiled
from dimbench.diffusion.losses import LOSSES, training_losses
from dimbench.diffusion.schedule import SCHEDULES, NoiseSchedule
from dimbench.errors import Interrupted, UsageError
from dimbench.latents import LATENT_CHANNELS, LATENT_DOWNSAMPLE
from dimbench.paths import writable_dir
from dimbench.registry import get_model
from dimbench.threads import omp_policy_in_effect
from dimbench.train import distributed as D
from dimbench.train.build import build_model, check_backends, model_input
from dimbench.train.checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    check_compatible,
    load_checkpoint,
    load_model_weights,
    load_weights,
    model_meta,
    remove_stale_temp_files,
    rng_state,
    set_rng_state,
)
from dimbench.train.config import TrainConfig
from dimbench.train.data import DataInfo, SampleStream, StepBatches, build_dataset, mix_seed
from dimbench.train.ema import make_ema
from dimbench.train.log import LOG_NAME, TrainLog, TrainProgress
from dimbench.train.signals import StopRequest

STEP_STREAM = 0x57E9  # salt of the per-step generator


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
    """Build everything a run needs from a ``TrainConfig``; ``fit()`` trains.

    ``data``: the (dataset, info) to train on, when the caller has it loaded already (the
    trainer reads ``cfg.data`` otherwise); ``context``: extra entries for ``config.json`` (what
    a caller ran this training for).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        dist: D.DistInfo | None = None,
        data: tuple[Dataset, DataInfo] | None = None,
        context: dict | None = None,
    ):
        cfg.validate()
        self.dist = dist or D.setup(cfg.device)
        self.device = self.dist.device
        check_backends(cfg.scan_backend, cfg.attn_backend, self.device, cfg.conv_backend)
        self.out = Path(cfg.out)
        self.context = dict(context or {})
        resume_ckpt = self._previous_run(cfg.resume)
        if resume_ckpt is not None:
            cfg = cfg.merged_with_checkpoint(resume_ckpt["meta"]["config"])
        else:
            cfg = cfg.with_defaults()
        self.cfg = cfg
        if cfg.batch_size % self.dist.world_size:
            raise UsageError(
                f"--batch-size {cfg.batch_size} does not split over {self.dist.world_size} ranks"
            )
        self.local_batch = cfg.batch_size // self.dist.world_size

        # data: pixels, pre-extracted latents, or pixels encoded by a VAE on the fly
        self.dataset, self.data_info = data or build_dataset(
            cfg.data, cfg.image_size, LATENT_DOWNSAMPLE
        )
        channels, self.downsample = model_input(self.data_info, cfg.vae)
        self.vae = None
        if cfg.vae and not self.data_info.latent:
            from dimbench.train.vae import load_vae

            self.vae = load_vae(cfg.vae, self.device)

        self.model, self.model_overrides = self._build_model(channels, resume_ckpt)
        self.meta = model_meta(self.model, self.downsample)
        self.schedule = self._objective()
        self.optimizer, self.lr_scheduler = self._optimizer()
        self.step = 0
        self.samples_seen = 0
        self.wall_time = 0.0  # in fit: steps and data loading, not checkpoint writes
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self._wall_at_save = 0.0  # wall_time of that checkpoint (the time-based ones)
        self.last_loss: torch.Tensor | None = None  # the latest step's loss (not synced)
        # losses since the last log row (sum, count): checkpointed, so a run resumed between
        # two log rows writes the same rows as an uninterrupted one
        self._loss_window: list = [torch.zeros((), device=self.device), 0]
        if cfg.init_from and resume_ckpt is None:
            self._init_from(cfg.init_from, cfg.init_weights)
        self.ema = make_ema(self.model, cfg.ema_decay, cfg.ema_warmup)
        if resume_ckpt is not None:
            self._restore(resume_ckpt, self.out / CHECKPOINT_NAME)
        self.net = compiled(self.model, cfg.compile)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.net, device_ids=ids)
        self.flops_per_step = self._train_flops() if self.dist.is_main else None

    # ---- construction ---------------------------------------------------------------------

    def _previous_run(self, resume: bool) -> dict | None:
        """The checkpoint to continue (``--resume``); refuse to start over an existing one."""
        if self.dist.is_main:
            writable_dir(self.out)
            remove_stale_temp_files(self.out)
        path = self.out / CHECKPOINT_NAME
        if resume:
            ckpt = load_checkpoint(path)
            if "config" not in ckpt["meta"]:  # released weights have no run to continue
                raise UsageError(
                    f"{path} holds released weights, not a training run: start from them "
                    "with --init-from in a new --out"
                )
            return ckpt
        if path.exists():
            load_checkpoint(path, mmap=True)  # an unreadable one: say so, not "resume"
            raise UsageError(
                f"{self.out} already holds a checkpoint: pass --resume to continue it, "
                "or choose another --out"
            )
        return None

    def _build_model(self, channels: int, previous: dict | None) -> tuple[nn.Module, dict]:
        """The model and its constructor overrides (same seed on every rank: identical initial
        weights). Its label table has the classes given (``num_classes`` among the overrides),
        else those of the run it resumes or of the weights it starts from (``--init-from``),
        else the data's, else the model's default (ImageNet's 1000)."""
        cfg = self.cfg
        overrides = {"in_channels": channels, **cfg.extra}
        if "num_classes" not in overrides:
            n_cls = self._weights_classes(previous)
            if n_cls is None:
                n_cls = self.data_info.num_classes
            if n_cls is not None:
                overrides["num_classes"] = n_cls
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model,
            cfg.image_size,
            self.downsample,
            overrides,
            cfg.scan_backend,
            cfg.attn_backend,
            device=self.device,
            conv_backend=cfg.conv_backend,
        )
        return model, overrides

    def _weights_classes(self, previous: dict | None) -> int | None:
        """The label-table size of the checkpoint this run resumes or is initialised from."""
        if previous is not None:
            return int(previous["meta"]["num_classes"])
        if self.cfg.init_from:
            meta = load_checkpoint(self.cfg.init_from, map_location="meta", mmap=False)["meta"]
            return int(meta["num_classes"]) if "num_classes" in meta else None
        return None

    def _objective(self) -> NoiseSchedule:
        """Settle the noise schedule (the model's) and the loss (hybrid for learned sigma)."""
        cfg = self.cfg
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
        return NoiseSchedule(cfg.schedule)

    def _optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        cfg = self.cfg
        optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LinearLR(
            optimizer,
            start_factor=1.0 / max(1, cfg.warmup),
            end_factor=1.0,
            total_iters=max(1, cfg.warmup - 1),
        )  # step k (1-based) trains with lr * min(k / warmup, 1), then lr
        return optimizer, scheduler

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
        self.saved_step, self._wall_at_save = self.step, self.wall_time
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
        self.saved_step, self._wall_at_save = self.step, self.wall_time
        total, count = ckpt.get("loss_window", (0.0, 0))
        self._loss_window = [torch.tensor(float(total), device=self.device), int(count)]
        set_rng_state(ckpt["rng"])

    def _init_from(self, path: str, which: str) -> None:
        """Weak-to-strong: this model's weights from a checkpoint of the same architecture at
        another resolution (the model resizes its position embedding while loading)."""
        load_model_weights(
            self.model, load_checkpoint(path), self.meta, f"--init-from {path}", which
        )

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
            h, w = x.shape[-2] // LATENT_DOWNSAMPLE, x.shape[-1] // LATENT_DOWNSAMPLE
            latent_shape = (LATENT_CHANNELS, h, w)
        t, noise, drop, vae_noise = self._step_randomness(
            self.step, tuple(x.shape[1:]), latent_shape
        )
        if self.vae is not None:
            from dimbench.train.vae import encode

            x = encode(self.vae, x, vae_noise, cfg.latent_scale)
        y = torch.where(drop, torch.full_like(y, self.model.num_classes), y)

        self.net.train()
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.dtype == "bf16"
            else nullcontext()
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
        self.last_loss = loss.detach()
        return self.last_loss, grad_norm.detach()

    def fit(
        self,
        until: int | None = None,
        seconds: float | None = None,
        on_step: Callable[[Trainer], None] | None = None,
    ) -> dict:
        """Train to ``cfg.steps`` and return a summary; or stop earlier, after step ``until``
        or once ``wall_time`` (training seconds) reaches ``seconds``. ``on_step(trainer)`` runs
        after every step (``trainer.last_loss`` holds its loss). Call again to continue: a run
        can advance in slices (train-compare's evaluation points) with the same trajectory,
        log and checkpoints as one call; stopping early writes no checkpoint of its own (the
        caller may ``save()``).

        Checkpoints: every ``cfg.checkpoint_interval()`` steps, after ``cfg.ckpt_minutes`` of
        training since the last one, at ``cfg.steps``, and on SIGINT/SIGTERM, after which
        ``fit`` raises ``Interrupted`` (exit 130/143). A second Ctrl-C stops without saving.
        Under torchrun every rank stops at the same step.
        """
        cfg = self.cfg
        end = min(cfg.steps, until) if until is not None else cfg.steps
        todo = max(0, end - self.step)
        if seconds is not None and self.wall_time >= seconds:
            todo = 0
        if self.dist.is_main:
            self._write_config()
        if todo == 0:
            return self._summary(math.nan, math.nan)
        every = cfg.checkpoint_interval()
        log = TrainLog(self.out / LOG_NAME, self.step) if self.dist.is_main else None
        progress = TrainProgress(cfg.steps, self.step, enabled=cfg.progress and self.dist.is_main)
        # a time limit reads the clock after every step: on a GPU, after the step has run
        sync = self.device.type == "cuda" and seconds is not None
        start_step, start = self.step, time.perf_counter()
        base_wall = self.wall_time
        logged_loss = math.nan
        stop = StopRequest()
        with progress, stop:
            for x, y in self._loader(todo):
                loss, grad_norm = self.train_step(x, y)
                self._loss_window[0] += loss
                self._loss_window[1] += 1
                if sync:
                    torch.cuda.synchronize(self.device)
                self.wall_time = base_wall + time.perf_counter() - start
                rate = (self.step - start_step) / max(1e-9, time.perf_counter() - start)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    total, count = self._loss_window
                    logged_loss = float(D.all_reduce_mean(total / count, self.dist))
                    self._loss_window = [torch.zeros((), device=self.device), 0]
                    if log is not None:
                        log.write(self._log_row(logged_loss, float(grad_norm)))
                progress.update(self.step, logged_loss, rate)
                if on_step is not None:
                    on_step(self)
                overdue = self.wall_time - self._wall_at_save >= cfg.ckpt_minutes * 60
                time_up = seconds is not None and self.wall_time >= seconds
                signum, overdue, time_up = D.agree_max(
                    self.dist, stop.signum, int(overdue), int(time_up)
                )
                if signum or overdue or self.step % every == 0 or self.step == cfg.steps:
                    paused = time.perf_counter()
                    self.save()
                    start += time.perf_counter() - paused  # writing it is not training time
                if signum:
                    if log is not None:
                        log.close()
                    raise Interrupted(
                        f"{signal.Signals(signum).name} at step {self.step} of {cfg.steps}: "
                        f"checkpoint saved in {self.out}; continue with --resume",
                        signum,
                    )
                if time_up:
                    break
        if self.device.type == "cuda":  # the last steps' kernels count as training time
            torch.cuda.synchronize(self.device)
            self.wall_time = base_wall + time.perf_counter() - start
        elapsed = time.perf_counter() - start
        if log is not None:
            log.close()
        done = self.step - start_step
        return self._summary(logged_loss, done / elapsed if elapsed > 0 else math.nan)

    def _summary(self, loss: float, steps_per_s: float) -> dict:
        return {
            "steps": self.step,
            "loss": loss,
            "steps_per_s": steps_per_s,
            "wall_time": self.wall_time,
            "out": str(self.out),
            "is_main": self.dist.is_main,
        }

    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        config = {
            **self.checkpoint_meta(),
            "omp_wait_policy": omp_policy_in_effect(),
            **self.context,
        }
        (self.out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")

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


def train(cfg: TrainConfig) -> dict:
    """Run one training job (the body of ``dimbench train``), torchrun-aware."""
    dist = D.setup(cfg.device)
    try:
        return Trainer(cfg, dist).fit()
    finally:
        D.cleanup()
