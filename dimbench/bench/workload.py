"""The work a measurement times: a model built for one configuration, random inputs of the
right shape, and one step of it (a forward pass, or forward + loss + backward + AdamW step).

Precision: ``fp32`` runs in float32; ``bf16``/``fp16`` run under ``torch.autocast`` with float32
weights, as DiM and DiT train and sample (the scan's A and D stay float32 either way).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dimbench.bench.spec import Config
from dimbench.compile import compiled
from dimbench.dtypes import TORCH_DTYPES
from dimbench.registry import create_model, get_model


@dataclass
class Workload:
    model: nn.Module
    step: Callable[[], None]
    images_per_step: int

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.model.parameters()) / 1e6


def warm_up_runtime(device: str) -> None:
    """Load what any model would load (model modules, timm, kernel libraries' code pages, the
    CUDA context and cuBLAS) before a memory region opens, so the region sees the model."""
    import dimbench.ops  # noqa: F401  (kernel backends)
    from dimbench.registry import list_models

    list_models()  # imports every model module
    dev = torch.device(device)
    a = torch.randn(64, 64, device=dev)
    (a @ a).sum().item()
    F.conv2d(torch.randn(1, 4, 8, 8, device=dev), torch.randn(8, 4, 2, 2, device=dev), stride=2)
    q = torch.randn(1, 2, 16, 16, device=dev)
    F.scaled_dot_product_attention(q, q, q)
    F.layer_norm(a, (64,))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def autocast_for(cfg: Config):
    if cfg.dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=TORCH_DTYPES[cfg.dtype])


def build_workload(cfg: Config, seed: int = 0) -> Workload:
    """Model, inputs and the step function for ``cfg`` on ``cfg.device``."""
    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    model = create_model(
        cfg.model, image_size=cfg.image_size, device=device, **cfg.backend_kwargs()
    )
    if cfg.weights:
        from dimbench.train.checkpoint import load_checkpoint, load_model_weights, model_meta

        ckpt = load_checkpoint(cfg.weights, map_location=device)
        load_model_weights(model, ckpt, model_meta(model, 8), f"--weights {cfg.weights}")
    net = compiled(model, cfg.compile)
    latent = get_model(cfg.model).input_size(cfg.image_size)
    b = cfg.batch_size
    x = torch.randn(b, model.in_channels, *latent, device=device)
    t = torch.randint(0, 1000, (b,), device=device).float()
    y = torch.randint(0, model.num_classes, (b,), device=device)
    amp = autocast_for(cfg)

    if cfg.mode == "forward":
        model.eval()

        @torch.inference_mode()
        def step() -> None:
            with amp:
                net(x, t, y)

        return Workload(model, step, b)

    model.train()
    noise = torch.randn_like(x)  # the epsilon target
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")
    channels = model.in_channels

    def train_step() -> None:
        with amp:
            out = net(x, t, y)
        loss = F.mse_loss(out[:, :channels].float(), noise)  # learned-sigma channels ignored
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return Workload(model, train_step, b)


def is_oom(exc: BaseException) -> bool:
    """Out of memory on either device (CUDA raises OutOfMemoryError, the CPU allocator a
    RuntimeError naming the failed allocation)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text
