"""Training data: bundled photographs, image folders, pre-extracted latents.

Every dataset is indexed by a key ``(index, seed)``: the sample and the seed of its random
augmentation (crop, flip, latent sampling). The trainer's ``SampleStream`` produces the keys, so
the whole data pipeline is a pure function of (run seed, position in the stream): resuming,
sharding across ranks and DataLoader workers never change what a step sees.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dimbench.errors import UsageError
from dimbench.latents import SD_LATENT_SCALE

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

# Colour photographs that ship inside scikit-image (skimage.data) and scikit-learn
# (load_sample_images), read straight from the installed packages' folders: no download, and
# no import of either package (seconds on a busy machine).
BUNDLED_PHOTOS = (
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
)

# Photographs that a comparison holds out whole (``train-compare``'s held-out set): training
# never sees them, the other eight are its training data.
HELDOUT_PHOTOS = ("coffee", "motorcycle_left")

Key = tuple[int, int]


def mix_seed(*values: int) -> int:
    """A 63-bit seed that depends on every value (NumPy's SeedSequence hashing)."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(
            2, np.uint64
        )[0]
        >> 1
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to_unit_range(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 127.5 - 1.0


@dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about a dataset."""

    kind: str  # "photos" | "folder" | "latents"
    channels: int  # channels of one sample as the dataset returns it
    num_classes: int | None  # None: not known without reading every sample
    latent: bool  # samples are already latents (scaled)
    description: str


def photo_paths() -> list[Path]:
    """Files of the bundled photographs, in label order."""
    import importlib.util

    paths = []
    for package, rel in BUNDLED_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"--data photos needs the {package} package installed")
        paths.append(Path(spec.submodule_search_locations[0]) / rel)
    return paths


@functools.lru_cache(maxsize=4)
def load_photos(max_short_side: int | None = None) -> tuple[tuple[str, np.ndarray], ...]:
    """The bundled photographs as (name, HxWx3 uint8), shrunk (antialiased) so that the shorter
    side is at most ``max_short_side``."""
    from PIL import Image

    photos = []
    for path in photo_paths():
        with Image.open(path) as im:
            im = im.convert("RGB")
            short = min(im.size)
            if max_short_side and short > max_short_side:
                f = max_short_side / short
                im = im.resize((round(im.width * f), round(im.height * f)), Image.LANCZOS)
            photos.append((path.stem, np.asarray(im)))
    return tuple(photos)


class PhotoCrops(Dataset):
    """Random square crops of the bundled photographs, resized to ``image_size``, random flips.

    The crop side is drawn uniformly between ``min_scale`` and 1 of the photo's shorter side.
    Label = index of the source photo among those used. ``views`` crops per photo make one
    epoch. ``names``: only these photographs (file stems, in the bundled order); default all.
    """

    def __init__(
        self,
        image_size: int,
        views: int = 256,
        min_scale: float = 0.35,
        names: tuple[str, ...] | None = None,
    ):
        self.image_size = image_size
        self.min_scale = min_scale
        # the smallest crop must still hold image_size pixels; more resolution is wasted work
        photos = load_photos(max(64, math.ceil(2 * image_size / min_scale)))
        if names is not None:
            unknown = set(names) - {n for n, _ in photos}
            if unknown:
                raise ValueError(f"no bundled photo named {', '.join(sorted(unknown))}")
            photos = tuple(p for p in photos if p[0] in names)
        self.names = [n for n, _ in photos]
        self.images = [to_unit_range(img) for _, img in photos]
        self.views = views

    def __len__(self) -> int:
        return len(self.images) * self.views

    @property
    def num_classes(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index, seed = key
        label = index % len(self.images)
        img = self.images[label]
        g = _generator(seed)
        _, h, w = img.shape
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        side = max(1, round(min(h, w) * (self.min_scale + (1.0 - self.min_scale) * u[0])))
        top = int(u[1] * (h - side + 1))
        left = int(u[2] * (w - side + 1))
        crop = img[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(
            crop, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
        )[0].clamp(-1.0, 1.0)
        if u[3] < 0.5:
            crop = crop.flip(-1)
        return crop, label


class ImageFolderData(Dataset):
    """``root/<class>/<image>``: resized (shorter side) and centre-cropped to ``image_size``,
    random horizontal flip (DiT's ImageNet pipeline). Labels follow sorted class names."""

    def __init__(self, root: str | Path, image_size: int):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root), is_valid_file=_is_image)
        except (FileNotFoundError, RuntimeError) as e:
            raise UsageError(f"--data {root}: {e}") from None
        for path, _ in self.folder.samples:
            _check_image_header(path, root)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.folder.samples)

    @property
    def num_classes(self) -> int:
        return len(self.folder.classes)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.folder.samples[index]
        x = load_square(path, self.image_size)
        if torch.rand(1, generator=_generator(seed)).item() < 0.5:
            x = x.flip(-1)
        return x, label


def load_square(path: str | Path, image_size: int) -> torch.Tensor:
    """An image file resized (shorter side, bicubic) and centre-cropped to ``image_size``, in
    [-1, 1] (DiT's ImageNet pipeline without the flip)."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    with Image.open(path) as im:
        img = im.convert("RGB")
    img = TF.resize(img, image_size, InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return to_unit_range(np.asarray(img))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _check_image_header(path: str, root: str | Path) -> None:
    """Refuse a file that PIL cannot identify as an image, before training writes anything (its
    header only: a few microseconds a file, so a large folder is checked too)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - parsing the header is the check
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise UsageError(
            f"--data {root}: {path} is not a readable image ({reason}); remove or replace it"
        ) from None


class LatentData(Dataset):
    """Pre-extracted VAE latents, N x C x h x w, with labels.

    8 channels are U-ViT's "moments" (mean and log-variance of the SD VAE posterior): a latent is
    sampled per use and multiplied by 0.18215, as U-ViT trains. Other channel counts are latents
    used as stored (already scaled). Flipped copies, if wanted, are separate samples (U-ViT
    stores both), so no flip is applied here.
    """

    def __init__(self, arrays: np.ndarray, labels: np.ndarray, scale: float = SD_LATENT_SCALE):
        self.arrays = arrays
        self.labels = np.asarray(labels, dtype=np.int64)
        self.moments = arrays.shape[1] == 8
        self.scale = scale

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.arrays.shape[1] // 2 if self.moments else self.arrays.shape[1]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 1

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index, seed = key
        return self._latent(self.arrays[index], seed), int(self.labels[index])

    def _latent(self, arr: np.ndarray, seed: int) -> torch.Tensor:
        z = torch.from_numpy(np.array(arr, dtype=np.float32))
        if not self.moments:
            return z
        mean, logvar = z.chunk(2, dim=0)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean + std * torch.randn(mean.shape, generator=_generator(seed))) * self.scale


class LatentFolderData(LatentData):
    """U-ViT's feature folder: one ``<i>.npy`` per sample holding the pair (moments, label).

    Labels are read with each sample; the number of classes is not scanned (``None``: the
    model's own class count applies, ImageNet's 1000 for the paper's configs).
    """

    def __init__(self, root: Path, scale: float = SD_LATENT_SCALE):
        self.files = sorted(root.glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
        first, _ = _load_pair(self.files[0])
        self.shape = first.shape
        self.moments = first.shape[0] == 8
        self.scale = scale

    def __len__(self) -> int:
        return len(self.files)

    @property
    def channels(self) -> int:
        return self.shape[0] // 2 if self.moments else self.shape[0]

    @property
    def num_classes(self) -> None:
        return None

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        index, seed = key
        arr, label = _load_pair(self.files[index])
        return self._latent(arr, seed), label


def _load_pair(path: Path) -> tuple[np.ndarray, int]:
    pair = np.load(path, allow_pickle=True)
    return np.asarray(pair[0]), int(pair[1])


LATENT_KEYS = ("latents", "features", "moments", "z", "x", "arr_0")
LABEL_KEYS = ("labels", "label", "y", "arr_1")


def load_latent_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read latents and labels from a .npy (array, or U-ViT's (moments, label) pairs) or .npz."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                lat_key = next((k for k in LATENT_KEYS if k in f.files), None)
                if lat_key is None:
                    raise UsageError(
                        f"{path}: no latents array (expected one of {', '.join(LATENT_KEYS)}; "
                        f"found {', '.join(f.files)})"
                    )
                arrays = f[lat_key]
                lab_key = next((k for k in LABEL_KEYS if k in f.files and k != lat_key), None)
                labels = f[lab_key] if lab_key else np.zeros(len(arrays), np.int64)
        else:
            arrays = np.load(path, mmap_mode="r", allow_pickle=False)
            labels = np.zeros(len(arrays), np.int64)
    except ValueError as e:
        if "allow_pickle" not in str(e) and "Python objects" not in str(e):
            raise UsageError(f"{path}: {e}") from None
        # U-ViT's layout: an object array of (moments, label) pairs (pickled, a local file)
        pairs = np.load(path, allow_pickle=True)
        arrays = np.stack([np.asarray(p[0]) for p in pairs])
        labels = np.array([int(p[1]) for p in pairs], dtype=np.int64)
    if arrays.ndim != 4:
        raise UsageError(f"{path}: latents must be N x C x h x w, got shape {tuple(arrays.shape)}")
    if len(labels) != len(arrays):
        raise UsageError(f"{path}: {len(arrays)} latents but {len(labels)} labels")
    return arrays, labels


def build_dataset(
    data: str, image_size: int, downsample_latents: int = 8
) -> tuple[Dataset, DataInfo]:
    """``photos``, a folder of class sub-folders (images, or U-ViT's per-sample .npy features),
    or a .npy/.npz latents file. Latents must be ``image_size // downsample_latents`` wide."""
    if data == "photos":
        ds = PhotoCrops(image_size)
        return ds, DataInfo("photos", 3, ds.num_classes, False, f"{len(ds.names)} bundled photos")
    path = Path(data).expanduser()
    if not path.exists():
        raise UsageError(f"--data {data}: not 'photos' and no such file or folder")
    if path.is_file():
        if path.suffix not in (".npy", ".npz"):
            raise UsageError(f"--data {data}: a file must be .npy or .npz latents")
        arrays, labels = load_latent_arrays(path)
        ds = LatentData(arrays, labels)
        _check_latent_size(data, arrays.shape[-2:], image_size, downsample_latents)
        return ds, DataInfo("latents", ds.channels, ds.num_classes, True, f"{len(ds)} latents")
    npy = sorted(path.glob("*.npy"))
    if npy:
        ds = LatentFolderData(path)
        _check_latent_size(data, ds.shape[-2:], image_size, downsample_latents)
        return ds, DataInfo("latents", ds.channels, ds.num_classes, True, f"{len(ds)} latents")
    ds = ImageFolderData(path, image_size)
    info = DataInfo(
        "folder", 3, ds.num_classes, False, f"{len(ds)} images, {ds.num_classes} classes"
    )
    return ds, info


def _check_latent_size(data: str, hw, image_size: int, downsample: int) -> None:
    want = image_size // downsample
    if tuple(int(v) for v in hw) != (want, want):
        raise UsageError(
            f"--data {data}: latents are {hw[0]}x{hw[1]} but --image-size {image_size} needs "
            f"{want}x{want} (image size / {downsample})"
        )


class SampleStream:
    """The run's data order: epoch after epoch of seeded permutations, as one stream of keys.

    Position p of the stream is sample ``perm_e[p mod N]`` of epoch e = p // N with the
    augmentation seed mix(seed, p). A step takes the next global-batch slice of the stream, so
    the stream position (samples seen) is all a checkpoint needs to continue it exactly.
    """

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise UsageError("the dataset is empty")
        self.size = size
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = _generator(mix_seed(self.seed, 0xDA7A, epoch))
            self._perm = torch.randperm(self.size, generator=g).tolist()
            self._epoch = epoch
        return self._perm

    def keys(self, start: int, count: int) -> list[Key]:
        out = []
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.size)
            out.append((self.permutation(epoch)[i], mix_seed(self.seed, 0xA06, pos)))
        return out


class StepBatches:
    """Batch sampler for a DataLoader: for each step, this rank's slice of the global batch."""

    def __init__(
        self, stream: SampleStream, start: int, global_batch: int, rank: int, world: int, steps: int
    ):
        self.stream = stream
        self.start = start
        self.global_batch = global_batch
        self.local = global_batch // world
        self.rank = rank
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for s in range(self.steps):
            keys = self.stream.keys(self.start + s * self.global_batch, self.global_batch)
            yield keys[self.rank * self.local : (self.rank + 1) * self.local]


def shard_bounds(global_batch: int, rank: int, world: int) -> slice:
    local = global_batch // world
    return slice(rank * local, (rank + 1) * local)


__all__ = [
    "HELDOUT_PHOTOS",
    "DataInfo",
    "ImageFolderData",
    "LatentData",
    "LatentFolderData",
    "PhotoCrops",
    "SampleStream",
    "StepBatches",
    "build_dataset",
    "mix_seed",
    "shard_bounds",
]
