"""Checkpoints: atomic writes, safe loads, and the compatibility check between a checkpoint and
the model a command is about to build.

A checkpoint is one ``torch.save`` dict: ``meta`` (what model, size, channels, schedule, data and
training config produced it), ``model``, ``ema``, ``optimizer``, ``scheduler``, ``step``,
``samples_seen`` (the data-stream position), ``wall_time`` and ``rng`` (torch, CUDA, NumPy and
Python generator states). It is written to a temporary file in the same folder, flushed to disk,
then renamed over the old one, so a crash mid-write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimbench.errors import CheckpointError, UsageError
from dimbench.torch_files import load_torch_file

FORMAT = "dimbench-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"

# meta keys that must agree for a checkpoint to load into a model as-is (resume, sampling)
ARCH_KEYS = ("model", "in_channels", "out_channels", "num_classes", "learn_sigma", "downsample")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict:
    """Load a dimbench checkpoint (tensors and plain data only: ``weights_only``); an official
    DiM state dict comes back as the dimbench checkpoint it converts to.

    A file that is not one (another torch file, a CSV, a save cut off by a kill) is a one-line
    ``CheckpointError`` that says what it is and what to do. ``mmap`` maps the tensors instead
    of reading them: a cheap check of a large file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ckpt = load_torch_file(path, map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or ckpt.get("meta", {}).get("format") != FORMAT:
        from dimbench.models import dim_official

        if dim_official.is_official_state_dict(ckpt):  # a released DiM nnet_ema.pth
            return dim_official.as_dimbench_checkpoint(ckpt, path)
        raise CheckpointError(
            f"{path} is not a dimbench checkpoint (no {FORMAT!r} meta); give the checkpoint.pt "
            "that `dimbench train` writes, or its run folder"
        )
    return ckpt


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of saves that were killed before their rename."""
    stale = sorted(Path(folder).glob(f".{CHECKPOINT_NAME}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def model_meta(model: torch.nn.Module, downsample: int) -> dict:
    """What identifies a model's architecture and input, recorded in every checkpoint."""
    return {
        "format": FORMAT,
        "model": getattr(model, "model_name", type(model).__name__),
        "family": getattr(model, "family", None),  # create_model records the registered one
        "image_size": list(getattr(model, "image_size", ())),
        "downsample": downsample,
        "in_channels": int(model.in_channels),
        "out_channels": int(model.out_channels),
        "num_classes": int(model.num_classes),
        "learn_sigma": bool(getattr(model, "learn_sigma", False)),
    }


def check_compatible(
    meta: dict, expected: dict, path: str | Path, allow_resize: bool = False
) -> None:
    """Raise ``CheckpointError`` naming every field where ``meta`` differs from ``expected``.

    ``allow_resize`` (weak-to-strong initialisation, upsampled sampling) accepts another image
    size; the architecture must still match.
    """
    keys = ARCH_KEYS if allow_resize else (*ARCH_KEYS, "image_size")
    diffs = [
        f"{k} {meta.get(k)!r} (wanted {expected.get(k)!r})"
        for k in keys
        if k in expected and _norm(meta.get(k)) != _norm(expected.get(k))
    ]
    if diffs:
        hint = "" if allow_resize else "; to start from a lower resolution use --init-from"
        raise CheckpointError(f"checkpoint {path} is for another model: {', '.join(diffs)}{hint}")


def check_official_fits(meta: dict, model: torch.nn.Module, path: str | Path) -> None:
    """One-line UsageError when the official DiM checkpoint behind ``meta`` (from
    ``dim_official.as_dimbench_checkpoint``) cannot initialise ``model``: another width, depth,
    ..."""
    from dimbench.models.dim import DiM

    config = meta["official_config"]
    name = getattr(model, "model_name", type(model).__name__)
    what = f"{path}: this is an {meta['official']}"
    if not isinstance(model, DiM):
        raise UsageError(f"{what}; {name} is not a DiM")
    mixer = model.blocks[0].mixer
    have = {
        "width": model.hidden_size,
        "depth": model.depth,
        "patch": model.patch_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "classes": model.num_classes,
        "d_state": mixer.d_state,
        "d_conv": mixer.d_conv,
        "expand": mixer.d_inner // mixer.d_model,
    }
    want = {
        "width": config["hidden_size"],
        "depth": config["depth"],
        "patch": config["patch_size"],
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "classes": config["num_classes"],
        "d_state": config["d_state"],
        "d_conv": config["d_conv"],
        "expand": config["expand"],
    }
    diffs = [f"{k} {have[k]}" for k in have if have[k] != want[k]]
    if diffs:
        raise UsageError(f"{what}; {name} has {', '.join(diffs)}")


def load_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line ``CheckpointError`` when it does not fit
    (e.g. a checkpoint written before a model's definition changed)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines()[1:] if ln.strip()]
        detail = "; ".join(ln if len(ln) <= 160 else ln[:157] + "..." for ln in lines[:2])
        raise CheckpointError(f"{what}: the weights do not fit the model: {detail}") from None


def load_model_weights(
    model: torch.nn.Module, ckpt: dict, expected: dict, what: str, which: str = "ema"
) -> None:
    """A checkpoint's weights (``which``: ema or model) into ``model``, which may be built for
    another resolution: a dimbench checkpoint of the same architecture (``expected`` is the
    model's ``model_meta``) or a released DiM file (its shapes decide, not its name). One-line
    ``CheckpointError`` when they do not fit."""
    if "official" in ckpt["meta"]:
        check_official_fits(ckpt["meta"], model, what)
    else:
        check_compatible(ckpt["meta"], expected, what, allow_resize=True)
    load_weights(model, ckpt[which], what)


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def rng_state() -> dict:
    """Every global generator's state, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
