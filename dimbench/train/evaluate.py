"""What ``dimbench train-compare`` measures at each evaluation point.

- Held-out denoising loss: epsilon MSE of a fixed image set at a fixed grid of timesteps with
  fixed noise, in eval mode, with the true labels (no label dropout). The same images, timesteps
  and noise for every model and every point, so the curves differ only by the weights.
- Quick-look sample quality: ``n_gen`` samples (fixed noise and labels per sample index,
  DPM-Solver++, no guidance) scored by FID on Inception features against a reference set whose
  statistics are computed once and cached, and optionally by the weight-free sliced Wasserstein
  distance. FID on a few hundred samples is strongly biased upwards: every value is reported
  with its ``n_gen`` and ``n_ref`` and is comparable only at equal counts.

Under torchrun every rank evaluates a slice (held-out images, sample batches); the sums and the
Inception features are gathered, so the numbers do not depend on the number of ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dimbench.diffusion.losses import diffusion_loss
from dimbench.diffusion.samplers import sample
from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.train import distributed as D
from dimbench.train.data import mix_seed

HELDOUT_NOISE_SALT = 0x4E01
GEN_SALT = 0x6E01

Key = tuple[int, int]
Decoder = Callable[[torch.Tensor], torch.Tensor]  # model space -> images in [-1, 1]


def timestep_grid(count: int, num_timesteps: int = 1000) -> list[int]:
    """``count`` timesteps at the centres of equal bins of [0, num_timesteps)."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"timestep count must be in [1, {num_timesteps}], got {count}")
    return [int((k + 0.5) * num_timesteps / count) for k in range(count)]


@dataclass
class HeldOutSet:
    """Fixed images (in model space), labels, timesteps and one noise draw per (timestep, image)."""

    x0: torch.Tensor  # (N, C, h, w)
    y: torch.Tensor  # (N,)
    timesteps: list[int]
    noise: torch.Tensor  # (len(timesteps), N, C, h, w)
    description: str = ""

    @property
    def size(self) -> int:
        return int(self.x0.shape[0])


def build_heldout(
    dataset, keys: Sequence[Key], timesteps: Sequence[int], seed: int, description: str = ""
) -> HeldOutSet:
    """Read the samples at ``keys`` (``dataset[(index, augmentation seed)]``) and draw the noise."""
    items = [dataset[k] for k in keys]
    x0 = torch.stack([x for x, _ in items]).float()
    y = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    g = torch.Generator().manual_seed(mix_seed(seed, HELDOUT_NOISE_SALT))
    noise = torch.randn((len(timesteps), *x0.shape), generator=g)
    return HeldOutSet(x0, y, [int(t) for t in timesteps], noise, description)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.no_grad()
def heldout_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    held: HeldOutSet,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    bf16: bool = False,
    dist: D.DistInfo | None = None,
) -> dict:
    """Mean epsilon MSE over the held-out images and timesteps: ``{"loss", "by_t"}``.

    The model is put in eval mode (the trainer puts it back in training mode at its next
    step). Each rank takes every ``world``-th image; the sums are reduced over ranks.
    """
    device = torch.device(device)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    was_training = model.training
    model.eval()
    mine = torch.arange(rank, held.size, world)
    sums = torch.zeros(len(held.timesteps), dtype=torch.float64, device=device)
    for k, t in enumerate(held.timesteps):
        for chunk in mine.split(batch_size):
            x0 = held.x0[chunk].to(device)
            noise = held.noise[k, chunk].to(device)
            y = held.y[chunk].to(device)
            tt = torch.full((len(chunk),), t, dtype=torch.long, device=device)
            x_t = schedule.q_sample(x0, tt, noise)
            with _autocast(device, bf16):
                out = model(x_t, tt, y)
            sums[k] += diffusion_loss(out, x0, x_t, tt, noise, schedule, "mse").double().sum()
    model.train(was_training)
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(sums)
    by_t = (sums / held.size).tolist()
    return {
        "loss": float(sum(by_t) / len(by_t)),
        "by_t": {int(t): float(v) for t, v in zip(held.timesteps, by_t, strict=True)},
    }


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, 3, H, W) on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


@torch.no_grad()
def generate_images(
    model: nn.Module,
    schedule: NoiseSchedule,
    num: int,
    shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    sampler: str = "dpm++",
    steps: int = 25,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    decoder: Decoder | None = None,
    bf16: bool = False,
    dist: D.DistInfo | None = None,
) -> torch.Tensor:
    """This rank's share of ``num`` conditional samples (no guidance) as uint8 images.

    Batch b (of ``batch_size`` sample indices) draws its labels and noise from a generator
    seeded by (seed, b) and runs on rank b mod world, so sample i is the same whatever the
    number of ranks and whatever the model: models are compared on the same noise and labels.
    """
    device = torch.device(device)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    was_training = model.training
    model.eval()
    out = []
    for b in range(rank, math.ceil(num / batch_size), world):
        g = torch.Generator().manual_seed(mix_seed(seed, GEN_SALT, b))
        n = min(batch_size, num - b * batch_size)
        y = torch.randint(0, num_classes, (n,), generator=g).to(device)
        noise = torch.randn((n, *shape), generator=g).to(device)

        def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            with _autocast(device, bf16):
                return model(x, t, y).float()

        x0 = sample(sampler, fn, schedule, noise, steps, generator=g)
        out.append(to_uint8(decoder(x0) if decoder is not None else x0))
    model.train(was_training)
    if not out:
        return torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
    return torch.cat(out)


@dataclass
class QualityProbe:
    """The quick-look quality metrics of one comparison: its reference set, loaded once.

    ``ref_stats``: Inception statistics of the reference (with features when computed here;
    rank 0 only); ``ref_images``: uint8 reference images (SWD needs them; None for a
    statistics file).
    """

    metrics: tuple[str, ...]
    num_gen: int
    shape: tuple[int, int, int]
    num_classes: int
    seed: int
    sampler: str
    steps: int
    batch_size: int
    ref_stats: object | None = None  # dimbench.metrics.fid.FeatureStats
    ref_images: torch.Tensor | None = None
    ref_count: int | None = None
    extractor: object | None = None  # InceptionFeatureExtractor
    decoder: Decoder | None = None
    bf16: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "metrics": list(self.metrics),
            "n_gen": self.num_gen,
            "n_ref": self.ref_count,
            "sampler": self.sampler,
            "sample_steps": self.steps,
            "guidance": "none (conditional samples, labels uniform over the classes)",
            "weights": "ema",
            "extractor": getattr(self.extractor, "id", None),
            "notes": self.notes,
        }

    def __call__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        device: torch.device | str = "cpu",
        dist: D.DistInfo | None = None,
    ) -> dict:
        """Generate, score; on rank 0 returns the metric values and counts ({} elsewhere)."""
        start = time.perf_counter()
        images = generate_images(
            model, schedule, self.num_gen, self.shape, self.num_classes, self.seed,
            self.sampler, self.steps, self.batch_size, device, self.decoder, self.bf16, dist,
        )  # fmt: skip
        result: dict = {"n_gen": self.num_gen, "n_ref": self.ref_count}
        if "fid" in self.metrics:  # every rank extracts and sends; rank 0 holds the reference
            from dimbench.metrics.fid import FeatureStats, extract_features, frechet_distance

            feats = extract_features(images, self.extractor) if len(images) else None
            feats = _gather_rows(feats, dist)
            if feats is not None and self.ref_stats is not None:
                # frechet_distance, not metrics.evaluate: evaluate's torchmetrics metric would
                # gather its states over the process group from rank 0 alone and hang
                gen, ref = FeatureStats.from_features(feats, self.extractor.id), self.ref_stats
                fid = frechet_distance(
                    gen.mu, gen.sigma, ref.mu, ref.sigma,
                    features1=gen.features, features2=ref.features,
                )  # fmt: skip
                result |= {"fid": fid, "n_gen": gen.n, "n_ref": ref.n}
        if "swd" in self.metrics and self.ref_images is not None:
            gathered = _gather_rows(images, dist)
            if gathered is not None:
                from dimbench.metrics import sliced_wasserstein

                r = sliced_wasserstein(gathered, self.ref_images, seed=self.seed)
                result["swd"] = r["swd"]["avg"]
        result["seconds"] = time.perf_counter() - start
        return result if dist is None or dist.is_main else {}


def _gather_rows(t: torch.Tensor | None, dist: D.DistInfo | None) -> torch.Tensor | None:
    """Concatenate every rank's rows on rank 0 (None on the other ranks)."""
    if dist is None or not dist.enabled:
        return t
    parts: list = [None] * dist.world_size
    local = None if t is None or len(t) == 0 else t.cpu().numpy()
    torch.distributed.all_gather_object(parts, local)
    if not dist.is_main:
        return None
    parts = [p for p in parts if p is not None]
    return torch.from_numpy(np.concatenate(parts)) if parts else None
