"""Reading files that ``torch.save`` wrote (checkpoints, released weights) with errors a user can
act on: a truncated save, a file that is not a torch file at all, a torch file of other contents,
each one line (``CheckpointError``), never torch's five-line advice about ``weights_only``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from dimbench.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy format


def load_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> object:
    """``torch.load(path, weights_only=True)``; ``mmap`` maps tensors instead of reading them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise unreadable(path, e) from None


def unreadable(path: Path, error: Exception) -> CheckpointError:
    """Why ``torch.load`` could not read ``path``, in one line."""
    with path.open("rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        return CheckpointError(
            f"checkpoint {path} is truncated (a save cut off by a kill or a full disk?); "
            "delete it and start again, or restore an earlier copy"
        )
    if head[:1] != PICKLE_MAGIC and head != ZIP_MAGIC:
        return CheckpointError(f"{path} is not a checkpoint (not a file torch.save wrote)")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"{path} is not a dimbench checkpoint ({first[:160]}); give the checkpoint.pt that "
        "`dimbench train` writes"
    )
