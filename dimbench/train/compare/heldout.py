"""Which images a comparison holds out: images training never sees, and the training data
without them. The split is fixed by the data and the base seed, never by the seed of a run, so
every model and every seed is scored on the same images (and the same noise and timesteps).

- ``--data photos``: whole photographs (``HELDOUT_PHOTOS``, by name) are held out and scored
  as fixed random crops; the other photographs are the training data.
- ``--heldout DIR``: the image files under DIR (resized and centre-cropped to the image size);
  training uses all of ``--data``.
- any other data: a seeded choice of its samples, excluded from training (true labels).

Held-out photographs and folder images belong to no class training knows: they are scored with
the null label, which every model learns through label dropout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dimbench.errors import UsageError
from dimbench.train.data import (
    HELDOUT_PHOTOS,
    IMAGE_EXTENSIONS,
    DataInfo,
    Key,
    PhotoCrops,
    load_square,
    mix_seed,
)

HELDOUT_SALT = 0x4E1D


@dataclass
class HeldOutSplit:
    """The training data (and its description) and the held-out samples: ``source[key]``."""

    train: Dataset
    info: DataInfo
    source: Dataset
    keys: list[Key]
    null_label: bool  # held-out images of no trained class: scored with the null label
    pixels: bool  # the held-out samples are images (a latent model needs them encoded)
    description: str
    record: dict  # the split, for train_compare.json


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


class ImageFiles(Dataset):
    """Image files as square ``image_size`` images, label 0 (the caller sets the label)."""

    def __init__(self, files: list[Path], image_size: int):
        self.files = files
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        return load_square(self.files[key[0]], self.image_size), 0


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (any depth), sorted."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def check_heldout_dir(folder: str) -> None:
    """``--heldout DIR`` must be a folder holding at least one image file."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(f"--heldout {folder}: no such folder")
    if not image_files(root):
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise UsageError(f"--heldout {folder}: no image files in it ({exts})")


def split_heldout(
    data: str, heldout: str | None, n: int, image_size: int, seed: int, dataset, info: DataInfo
) -> HeldOutSplit:
    """The held-out samples (``n``, fewer if ``--heldout DIR`` holds fewer) and the training
    data without them."""
    if heldout is not None:
        files = image_files(Path(heldout).expanduser())
        g = torch.Generator().manual_seed(mix_seed(seed, HELDOUT_SALT))
        chosen = sorted(torch.randperm(len(files), generator=g)[:n].tolist())
        keys = [(i, 0) for i in chosen]
        what = f"{len(keys)} images of {heldout} (resized, centre-cropped; training never sees it)"
        record = {"by": "folder", "folder": str(heldout), "files": [files[i].name for i in chosen]}
        return HeldOutSplit(
            dataset, info, ImageFiles(files, image_size), keys, True, True, what, record
        )
    if info.kind == "photos":
        train_names = tuple(nm for nm in dataset.names if nm not in HELDOUT_PHOTOS)
        train = PhotoCrops(image_size, names=train_names)
        source = PhotoCrops(image_size, names=HELDOUT_PHOTOS)
        keys = [(i, mix_seed(seed, HELDOUT_SALT, i)) for i in range(n)]
        what = (
            f"{n} fixed random crops of the bundled photos {', '.join(HELDOUT_PHOTOS)}, held out "
            f"whole (training: the other {len(train_names)})"
        )
        train_info = dataclasses.replace(
            info,
            num_classes=train.num_classes,
            description=f"{len(train_names)} bundled photos ({', '.join(HELDOUT_PHOTOS)} held out)",
        )
        record = {"by": "photo", "heldout": list(HELDOUT_PHOTOS), "train": list(train_names)}
        return HeldOutSplit(train, train_info, source, keys, True, True, what, record)
    if n >= len(dataset):
        raise UsageError(f"--heldout-images {n}: the data has only {len(dataset)} samples")
    g = torch.Generator().manual_seed(mix_seed(seed, HELDOUT_SALT))
    chosen = torch.randperm(len(dataset), generator=g)[:n].tolist()
    keys = [(i, mix_seed(seed, HELDOUT_SALT, i)) for i in chosen]
    what = f"{n} samples of {data} excluded from training"
    record = {"by": "sample", "count": n}
    return HeldOutSplit(
        Excluding(dataset, set(chosen)), info, dataset, keys, False, not info.latent, what, record
    )
