"""The comparison's evaluation, set up once from its data and the same for every model and
seed: the held-out set (its split: :mod:`.heldout`), the quality probe with its reference
images or statistics, and the measurements of one evaluation point
(:mod:`dimbench.train.evaluate` computes them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.latents import SD_LATENT_SCALE
from dimbench.train import distributed as D
from dimbench.train.compare.config import CompareConfig
from dimbench.train.compare.heldout import HELDOUT_SALT, HeldOutSplit
from dimbench.train.data import mix_seed
from dimbench.train.evaluate import (
    HeldOutSet,
    QualityProbe,
    build_heldout,
    heldout_loss,
    timestep_grid,
    to_uint8,
)

if TYPE_CHECKING:
    from dimbench.train.trainer import Trainer

REF_SALT = 0x4EF0
GEN_SEED_SALT = 0x6E5D


class PointEvaluator:
    """Held-out loss (EMA and raw weights) at every point, quick-look quality at the points
    that ask for it. ``split.train`` is what the models train on (without the held-out images);
    the held-out set, its noise and timesteps come from the base seed: the same for every model
    and every seed."""

    def __init__(
        self,
        cfg: CompareConfig,
        dist: D.DistInfo,
        split: HeldOutSplit,
        channels: int,
        downsample: int,
        schedule: NoiseSchedule,
        num_classes: int,
    ):
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.split = split
        self.train_data = split.train
        self.info = split.info
        self.channels = channels
        self.downsample = downsample
        self.schedule = schedule
        self.num_classes = num_classes
        self.heldout = self._heldout()
        self.probe = self._quality_probe() if cfg.metrics else None

    def describe(self) -> dict:
        """The ``heldout`` and ``quality`` entries of ``train_compare.json``."""
        held = self.heldout
        return {
            "heldout": {
                "description": held.description,
                "images": held.size,
                "timesteps": held.timesteps,
                "noise": "one fixed draw per (timestep, image), seeded by the base seed: the "
                "same for every model and seed",
                "weights": "heldout_loss: EMA weights; heldout_loss_raw: raw weights",
                "labels": (
                    "the null label (no class training knows), eval mode"
                    if self.split.null_label
                    else "true labels, no label dropout, eval mode"
                ),
                "split": self.split.record,
            },
            "quality": self.probe.describe() if self.probe else None,
        }

    def measure(self, trainer: Trainer, quality: bool) -> dict:
        """This point's held-out and (if ``quality``) sample-quality columns; every rank takes
        part, the quality columns are filled on rank 0."""
        cfg, dev = self.cfg, trainer.device
        ema = trainer.ema.module
        bf16 = cfg.recipe.dtype == "bf16"
        bs = cfg.eval_batch_size
        held = heldout_loss(ema, self.schedule, self.heldout, dev, bs, bf16, self.dist)
        raw = heldout_loss(trainer.model, self.schedule, self.heldout, dev, bs, bf16, self.dist)
        scores = {}
        if quality and self.probe is not None and self.probe.metrics:
            scores = self.probe(ema, self.schedule, dev, self.dist)
        return {
            "heldout_loss": held["loss"],
            "heldout_loss_raw": raw["loss"],
            "heldout_by_t": {str(t): round(v, 6) for t, v in held["by_t"].items()},
            "heldout_images": self.heldout.size,
            "fid": scores.get("fid"),
            "swd": scores.get("swd"),
            "n_gen": scores.get("n_gen") if scores else None,
            "n_ref": scores.get("n_ref") if scores else None,
            "sampler": cfg.sampler if scores else None,
            "sample_steps": cfg.sample_steps if scores else None,
        }

    # ---- setup ------------------------------------------------------------------------------

    def _heldout(self) -> HeldOutSet:
        split = self.split
        ts = timestep_grid(self.cfg.heldout_timesteps, self.schedule.num_timesteps)
        held = self._heldout_in_model_space(split.keys, ts, split.description)
        if split.null_label:
            held.y = torch.full_like(held.y, self.num_classes)
        return held

    def _heldout_in_model_space(self, keys, ts, what) -> HeldOutSet:
        held = build_heldout(self.split.source, keys, ts, self.cfg.recipe.seed, what)
        if self.cfg.recipe.vae and self.split.pixels:  # pixels encoded by the VAE, as training does
            from dimbench.train.vae import encode, load_vae

            vae = load_vae(self.cfg.recipe.vae, self.device)
            g = torch.Generator().manual_seed(mix_seed(self.cfg.recipe.seed, HELDOUT_SALT, 1))
            h, w = (s // self.downsample for s in held.x0.shape[-2:])
            noise = torch.randn((held.size, self.channels, h, w), generator=g)
            x0 = encode(vae, held.x0.to(self.device), noise.to(self.device), SD_LATENT_SCALE).cpu()
            noise_t = torch.randn((len(ts), *x0.shape), generator=g)
            held = HeldOutSet(x0, held.y, held.timesteps, noise_t, what)
        return held

    def _quality_probe(self) -> QualityProbe:
        cfg = self.cfg
        h = w = cfg.recipe.image_size // self.downsample
        probe = QualityProbe(
            metrics=tuple(cfg.metrics),
            num_gen=cfg.fid_gen,
            shape=(self.channels, h, w),
            num_classes=self.info.num_classes or self.num_classes,
            seed=mix_seed(cfg.recipe.seed, GEN_SEED_SALT),
            sampler=cfg.sampler,
            steps=cfg.sample_steps,
            batch_size=cfg.eval_batch_size,
            bf16=cfg.recipe.dtype == "bf16",
        )
        if self.downsample != 1:
            if not cfg.recipe.vae:
                probe.notes.append("no --vae: latent samples cannot be decoded, no FID/SWD")
                probe.metrics = ()
                return probe
            from dimbench.train.vae import decode, load_vae

            vae = load_vae(cfg.recipe.vae, self.device)
            probe.decoder = lambda z: decode(vae, z, SD_LATENT_SCALE)
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
        """uint8 reference images from the training data: fresh crops (photos) or a seeded
        sample."""
        cfg = self.cfg
        if self.info.kind == "photos":
            keys = [(i, mix_seed(cfg.recipe.seed, REF_SALT, i)) for i in range(n)]
            base = self.train_data
        else:
            base = self.train_data
            g = torch.Generator().manual_seed(mix_seed(cfg.recipe.seed, REF_SALT))
            idx = torch.randperm(len(base), generator=g)[:n].tolist()
            keys = [(i, mix_seed(cfg.recipe.seed, REF_SALT, i)) for i in idx]
        return to_uint8(torch.stack([base[k][0] for k in keys]))
