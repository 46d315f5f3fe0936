"""Image sets for the metrics: folders of image files and .npz archives, read as uint8 tensors.

Everything here hands out ``uint8`` tensors shaped ``(N, 3, H, W)`` (RGB, torch layout).
An .npz of images is what ADM and U-ViT write: one 4-D uint8 array, ``arr_0`` by
convention, shaped ``(N, H, W, 3)``. It is streamed from the archive in batches, so a
50,000-sample file is never held in memory at once. A statistics .npz (``mu`` and ``sigma``,
ADM / U-ViT reference batches, or dimbench's own cache files) is recognised by
:func:`npz_keys` and read elsewhere (``dimbench.metrics.fid``).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dimbench.errors import UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def npz_keys(path: str | Path) -> list[str]:
    """Array names inside an .npz, read from the zip directory (no array is loaded)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise UsageError(f"{path}: not a readable .npz archive ({e})") from None


def npz_array_shape(path: str | Path, name: str) -> tuple[int, ...]:
    """Shape of one array inside an .npz, read from its header only."""
    with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as f:
        return _read_npy_header(f, Path(path))[0]


def _to_rgb_nchw(batch: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) uint8 -> (N, 3, H, W) uint8: gray is repeated, alpha dropped."""
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    elif batch.shape[-1] == 4:
        batch = batch[..., :3]
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()


@dataclass
class ImageSource:
    """A set of same-sized images on disk, read lazily in batches."""

    path: Path
    kind: str  # "folder" | "npz"
    count: int
    height: int
    width: int
    files: list[Path] | None = None  # folder: the image files, sorted, already capped
    npz_member: str | None = None  # npz: the .npy member holding the images

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Yield uint8 (B, 3, H, W) batches in file order."""
        if batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {batch_size}")
        if self.kind == "folder":
            yield from self._folder_batches(batch_size)
        else:
            yield from self._npz_batches(batch_size)

    def load(self) -> torch.Tensor:
        """All images at once, uint8 (N, 3, H, W)."""
        return torch.cat(list(self.batches(max(1, min(self.count, 256)))))

    def fingerprint(self) -> str:
        """Changes when the files do (names, sizes, modification times) or the cap does."""
        h = hashlib.sha1()
        h.update(f"{self.path.resolve()}|{self.kind}|{self.count}".encode())
        for f in self.files or [self.path]:
            st = f.stat()
            h.update(f"|{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def _folder_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        assert self.files is not None
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes outside the GIL
            for start in range(0, len(self.files), batch_size):
                chunk = self.files[start : start + batch_size]
                arrays = list(pool.map(_read_image_file, chunk))
                for f, a in zip(chunk, arrays, strict=True):
                    if a.shape[:2] != self.size:
                        raise UsageError(
                            f"{f}: image is {a.shape[0]}x{a.shape[1]}, the others in "
                            f"{self.path} are {self.height}x{self.width} (resize them first)"
                        )
                yield _to_rgb_nchw(np.stack(arrays))

    def _npz_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        assert self.npz_member is not None
        with zipfile.ZipFile(self.path) as zf, zf.open(self.npz_member + ".npy") as f:
            shape, dtype = _read_npy_header(f, self.path)
            per_image = int(np.prod(shape[1:])) * dtype.itemsize
            left = self.count
            while left > 0:
                n = min(batch_size, left)
                buf = f.read(n * per_image)
                if len(buf) != n * per_image:
                    raise UsageError(f"{self.path}: the image array is truncated")
                batch = np.frombuffer(bytearray(buf), dtype=dtype).reshape((n, *shape[1:]))
                yield _to_rgb_nchw(batch)
                left -= n


def _read_image_file(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise UsageError(f"{path}: cannot read image ({e})") from None


def _read_npy_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise UsageError(f"{path}: Fortran-ordered arrays are not supported")
    return shape, dtype


def _image_array_member(path: Path) -> tuple[str, tuple[int, ...]]:
    """The member of an .npz that holds images: ``arr_0`` if it is one, else the first
    uint8 array shaped (N, H, W, C) with C in 1, 3, 4 or (N, H, W)."""
    with zipfile.ZipFile(path) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        ordered = sorted(names, key=lambda n: n != "arr_0")
        for name in ordered:
            with zf.open(name + ".npy") as f:
                shape, dtype = _read_npy_header(f, path)
            channels_ok = len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))
            if dtype == np.uint8 and channels_ok:
                return name, shape
    raise UsageError(
        f"{path}: no uint8 image array (N, H, W, 3) in this .npz (arrays: {', '.join(names)})"
    )


# What `dimbench sample` writes into its --out: the samples' archive and its record, beside the
# samples' PNGs and a preview grid that is not a sample
SAMPLES_NPZ, SAMPLES_RECORD = "samples.npz", "samples.json"


def open_images(path: str | Path, num: int | None = None) -> ImageSource:
    """Open a folder of images (searched recursively, sorted by path) or an .npz of images.

    A folder that ``dimbench sample`` wrote (its ``samples.json`` beside ``samples.npz``) is read
    from that archive, so its preview ``grid.png`` is never taken for a sample.
    ``num`` caps the count (the first ``num`` in order). Errors are :class:`UsageError`.
    """
    p = Path(path)
    if num is not None and num < 1:
        raise UsageError(f"--num must be >= 1, got {num}")
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder")
    if p.is_dir() and (p / SAMPLES_RECORD).is_file() and (p / SAMPLES_NPZ).is_file():
        return open_images(p / SAMPLES_NPZ, num)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
        )
        if not files:
            raise UsageError(f"{p}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
        files = files[:num] if num else files
        first = _read_image_file(files[0])
        h, w = first.shape[:2]
        return ImageSource(p, "folder", len(files), h, w, files=files)
    if p.suffix.lower() == ".npz":
        member, shape = _image_array_member(p)
        if shape[0] == 0:
            raise UsageError(f"{p}: the image array '{member}' is empty")
        count = min(shape[0], num) if num else shape[0]
        return ImageSource(p, "npz", count, shape[1], shape[2], npz_member=member)
    raise UsageError(f"{p}: expected a folder of images or an .npz file")


def load_images(path: str | Path, num: int | None = None) -> torch.Tensor:
    """Read a whole image set into memory: uint8 (N, 3, H, W)."""
    return open_images(path, num).load()


def check_uint8_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Validate an in-memory batch: uint8 (N, 3, H, W)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{what}: expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{what}: empty")
    return images


def save_npz_images(path: str | Path, images: torch.Tensor) -> None:
    """Write uint8 (N, 3, H, W) as ADM/U-ViT do: ``arr_0`` shaped (N, H, W, 3)."""
    check_uint8_images(images)
    np.savez(path, arr_0=images.permute(0, 2, 3, 1).cpu().numpy())
