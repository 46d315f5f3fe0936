"""torchrun support: process-group setup from the environment, and small collective helpers.

Under ``torchrun --nproc_per_node=N`` every process reads RANK / WORLD_SIZE / LOCAL_RANK and
joins one group (NCCL on CUDA, gloo on CPU); a plain ``python`` run is world size 1 and never
touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dimbench.devices import parse_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if there is one, else the CPU; plain ``cuda`` -> this
    rank's GPU (``LOCAL_RANK``)."""
    device = parse_device(device, allow_auto=True)
    if device == "cuda":
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return torch.device(device)


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself when not distributed)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def agree_max(info: DistInfo, *values: int) -> tuple[int, ...]:
    """The largest of each value over ranks, so every rank takes the same decision (save,
    stop) on the same step; the values themselves when not distributed."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(int(v) for v in t.tolist())


def broadcast_object(obj, info: DistInfo, src: int = 0):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
