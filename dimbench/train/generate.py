"""Sampling from a training checkpoint: the body of ``dimbench sample``.

Samples are made in global batches; batch b is seeded by (seed, b) and runs on rank
b mod world_size, so the images do not depend on how many processes share the work (FID-50K on
several GPUs under torchrun). Each rank writes its PNGs and a part file; rank 0 merges the parts
into ``samples.npz`` (``arr_0``: N x H x W x 3 uint8 as ADM/DiT's FID tools read it, ``labels``;
latent samples without a VAE are stored as ``latents`` instead) and a preview ``grid.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dimbench.diffusion.guidance import make_model_fn
from dimbench.diffusion.samplers import DEFAULT_STEPS, sample
from dimbench.diffusion.schedule import NoiseSchedule
from dimbench.diffusion.upsample import UpsampleGuidance
from dimbench.errors import UsageError
from dimbench.latents import SD_LATENT_SCALE
from dimbench.metrics.images import SAMPLES_NPZ, SAMPLES_RECORD
from dimbench.metrics.structure import lag1_autocorrelation
from dimbench.paths import writable_dir
from dimbench.threads import omp_policy_in_effect
from dimbench.train import distributed as D
from dimbench.train.build import build_model, check_backends
from dimbench.train.checkpoint import load_checkpoint, load_weights
from dimbench.train.data import mix_seed
from dimbench.train.ema import EARLY_FRACTION, EARLY_WARN, early_share
from dimbench.train.sample_config import SampleConfig, check_weight_set

SAMPLE_STREAM = 0x5A3E


def load_for_sampling(
    ckpt_path: str | Path,
    weights: str = "ema",
    device: torch.device | str = "cpu",
    scan_backend: str = "auto",
    attn_backend: str = "auto",
    conv_backend: str = "auto",
) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model (EMA or raw weights) at its training resolution, in eval mode."""
    check_weight_set(weights)
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt["meta"]
    model = build_model(
        meta["model"],
        meta["image_size"][0],
        meta["downsample"],
        meta["model_overrides"],
        scan_backend,
        attn_backend,
        device=device,
        conv_backend=conv_backend,
    )
    load_weights(model, ckpt[weights], str(ckpt_path))
    steps = ckpt.get("step")  # None for an official checkpoint: its file does not say
    return model.eval().requires_grad_(False), {**meta, "trained_steps": steps}


def describe_weights(meta: dict, weights: str) -> tuple[str, str | None]:
    """Which weights sampling uses, in words, and a warning when an EMA has seen so few updates
    that it is still mostly the start of training (its samples look untrained)."""
    steps = meta.get("trained_steps")
    if steps is None:
        return f"released weights ({meta.get('official', 'an official checkpoint')})", None
    if weights == "model":
        return f"raw weights after {steps} steps", None
    cfg = meta.get("config", {})
    decay, warmup = cfg.get("ema_decay", 0.9999), bool(cfg.get("ema_warmup", False))
    text = f"EMA weights (decay {decay:g}, {'with' if warmup else 'no'} warm-up, {steps} updates)"
    share = early_share(decay, warmup, steps)
    if share <= EARLY_WARN:
        return text, None
    return text, (
        f"{share:.0%} of the EMA's weight comes from the first {EARLY_FRACTION:.0%} of training: "
        "the samples will look like an untrained model's; use --ckpt-weights model, or train "
        "with --ema-warmup or for longer"
    )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W in [-1, 1] -> B x H x W x 3 uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def generate(
    ckpt: str | Path,
    out: str | Path,
    cfg: SampleConfig | None = None,
    dist: D.DistInfo | None = None,
    **settings,
) -> dict:
    """Draw samples from a checkpoint as ``cfg`` says (``settings``: SampleConfig fields that
    replace its values); returns a summary (paths, timing)."""
    cfg = replace(cfg or SampleConfig(), **settings)
    cfg.validate()
    steps = cfg.steps or DEFAULT_STEPS[cfg.sampler]
    dist = dist or D.setup(cfg.device)
    check_backends(cfg.scan_backend, cfg.attn_backend, dist.device, cfg.conv_backend)
    if dist.is_main:
        writable_dir(out)
    model, meta = load_for_sampling(
        ckpt, cfg.weights, dist.device, cfg.scan_backend, cfg.attn_backend, cfg.conv_backend
    )
    weights_used, weights_warning = describe_weights(meta, cfg.weights)
    clip_x0 = cfg.clip_x0
    if clip_x0 is None:  # pixels live in [-1, 1]; latents are unbounded
        clip_x0 = not meta.get("latent")
    schedule = NoiseSchedule(meta["schedule"])
    n_cls = meta.get("data_classes") or model.num_classes
    if cfg.class_label is not None and not 0 <= cfg.class_label < model.num_classes:
        raise UsageError(f"--class-label {cfg.class_label} out of range [0, {model.num_classes})")
    c = model.in_channels
    m = cfg.upsample or 1
    h, w = (s // meta["downsample"] * m for s in meta["image_size"])
    decoder = _decoder(meta, cfg.vae, dist.device)

    out = Path(out)
    parts = out / ".parts"
    if dist.is_main:
        parts.mkdir(parents=True, exist_ok=True)
    D.barrier(dist)
    n_batches = math.ceil(cfg.num / cfg.batch_size)
    mine = list(range(dist.rank, n_batches, dist.world_size))
    indices, arrays, labels = [], [], []
    start = time.perf_counter()
    bar = _bar(len(mine), cfg.progress and dist.is_main)
    for b in mine:
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, SAMPLE_STREAM, b))
        bs = min(cfg.batch_size, cfg.num - b * cfg.batch_size)
        y = torch.randint(0, n_cls, (bs,), generator=g)
        if cfg.class_label is not None:
            y.fill_(cfg.class_label)
        noise = torch.randn((bs, c, h, w), generator=g)
        y, noise = y.to(dist.device), noise.to(dist.device)
        fn = make_model_fn(model, y, cfg.cfg_scale)
        if m > 1:
            fn = UpsampleGuidance(fn, schedule, m, c, enabled=cfg.upsample_guidance)
        x0 = sample(
            cfg.sampler,
            fn,
            schedule,
            noise,
            steps,
            generator=_device_generator(g, dist.device),
            order=cfg.order,
            eta=cfg.eta,
            learned_variance=meta.get("loss") == "hybrid",
            clip_x0=clip_x0,
        )
        images = decoder(x0) if decoder is not None else x0
        ids = list(range(b * cfg.batch_size, b * cfg.batch_size + bs))
        if decoder is not None or not meta.get("latent"):
            arr = to_uint8(images)
            for i, img in zip(ids, arr, strict=True):
                _save_png(img, out / f"{i:06d}.png")
        else:
            arr = x0.float().cpu().numpy()
        indices += ids
        arrays.append(arr)
        labels.append(y.cpu().numpy())
        bar.advance()
    bar.close()
    elapsed = time.perf_counter() - start
    np.savez(
        parts / f"rank{dist.rank}.npz",
        indices=np.array(indices, dtype=np.int64),
        samples=np.concatenate(arrays) if arrays else np.zeros((0,)),
        labels=np.concatenate(labels) if labels else np.zeros((0,), np.int64),
    )
    D.barrier(dist)
    summary = {
        "ckpt": str(ckpt),
        "model": meta["model"],
        "image_size": [s * m for s in meta["image_size"]],
        "num": cfg.num,
        "sampler": cfg.sampler,
        "steps": steps,
        "order": cfg.order if cfg.sampler == "dpm++" else None,
        "cfg_scale": cfg.cfg_scale,
        "clip_x0": clip_x0,
        "upsample": cfg.upsample,
        "upsample_guidance": bool(cfg.upsample and cfg.upsample_guidance),
        "weights": cfg.weights,
        "weights_used": weights_used,
        "weights_warning": weights_warning,
        "trained_steps": meta["trained_steps"],
        "seed": cfg.seed,
        "world_size": dist.world_size,
        "omp_wait_policy": omp_policy_in_effect(),
        "seconds": elapsed,
        "decoded": decoder is not None or not meta.get("latent"),
    }
    if dist.is_main:
        npz, merged = _merge_parts(parts, out, dist.world_size, summary["decoded"])
        summary["npz"] = str(npz)
        if summary["decoded"] and len(merged):
            summary["lag1_autocorrelation"] = lag1_autocorrelation(merged)
        (out / SAMPLES_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
    D.barrier(dist)
    return summary


def _decoder(meta: dict, vae: str | None, device: torch.device):
    """Latents -> images through the SD VAE when one is given (or recorded at training)."""
    if not meta.get("latent"):
        return None
    path = vae or meta.get("vae")
    if not path:
        return None
    from dimbench.train.vae import decode, load_vae

    model = load_vae(path, device)
    scale = meta.get("latent_scale", SD_LATENT_SCALE)
    return lambda z: decode(model, z, scale)


def _device_generator(g: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on the sampling device, seeded from the batch's CPU generator."""
    if device.type == "cpu":
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=device).manual_seed(seed)


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img).save(path)


def _merge_parts(parts: Path, out: Path, world: int, decoded: bool) -> tuple[Path, np.ndarray]:
    idx, samples, labels = [], [], []
    for r in range(world):
        with np.load(parts / f"rank{r}.npz") as f:
            if len(f["indices"]):
                idx.append(f["indices"])
                samples.append(f["samples"])
                labels.append(f["labels"])
    order = np.argsort(np.concatenate(idx))
    samples_all = np.concatenate(samples)[order]
    labels_all = np.concatenate(labels)[order]
    path = out / SAMPLES_NPZ
    if decoded:
        np.savez(path, arr_0=samples_all, labels=labels_all)
        _save_grid(samples_all[:64], out / "grid.png")
    else:
        np.savez(path, latents=samples_all, labels=labels_all)
    for r in range(world):
        (parts / f"rank{r}.npz").unlink()
    parts.rmdir()
    return path, samples_all


def _save_grid(images: np.ndarray, path: Path) -> None:
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[1:3]
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    _save_png(grid, path)


class _bar:
    """A rich progress bar over batches, or nothing."""

    def __init__(self, total: int, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress(
                "sample", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
            )
            self.task = self.progress.add_task("sample", total=total)
            self.progress.start()

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
