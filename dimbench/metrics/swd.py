"""Multi-scale sliced Wasserstein distance (SWD): an image-set metric with no network weights.

As Karras et al. report it for progressive GANs (ICLR 2018, appendix D): every image is
split into a Laplacian pyramid from full resolution down to 16 px; from each level 128
random 7x7 neighbourhoods per image become 147-d descriptors; each set's descriptors are
normalised per colour channel (its own mean and std); the two descriptor sets of a level
are compared by the sliced Wasserstein-1 distance over 512 random unit directions (four
rounds of 128), i.e. the mean absolute difference of the sorted 1-D projections. Values
are reported x1e3 per level and averaged, as in the paper's tables. The finest level
measures local texture and noise, the coarsest the overall colour layout.

Cheap at any resolution (no 299-px resize, no Inception), so it is the quick look for
1024-1536 px samples; it is not comparable with FID and depends on the sample count.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from dimbench.errors import UsageError
from dimbench.metrics.images import ImageSource, check_uint8_images, open_images

PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
PROJECTIONS = 512
PROJECTIONS_PER_ROUND = 128
MIN_RESOLUTION = 16
SCALE = 1e3

# 5-tap binomial filter, as cv2.pyrDown / pyrUp use.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    c = x.shape[1]
    k = (_BINOMIAL * gain).to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1).contiguous(), groups=c)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=2.0)[:, :, : size[0], : size[1]]  # 2 per axis: 4 in 2-D


def pyramid_levels(height: int, width: int, min_resolution: int = MIN_RESOLUTION) -> int:
    """Levels from full size down to ``min_resolution`` on the short side (at least one)."""
    if min(height, width) < PATCH_SIZE:
        raise UsageError(f"SWD needs images of at least {PATCH_SIZE} px, got {height}x{width}")
    levels, side = 1, min(height, width)
    while side // 2 >= min_resolution:
        side //= 2
        levels += 1
    return levels


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
    pyramid = [images.float()]
    for _ in range(1, levels):
        low = _pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - _pyr_up(low, pyramid[-1].shape[-2:])
        pyramid.append(low)
    return pyramid


def random_patches(
    level: torch.Tensor, per_image: int, generator: torch.Generator, patch: int = PATCH_SIZE
) -> torch.Tensor:
    """``per_image`` random ``patch`` x ``patch`` neighbourhoods of every image:
    (N * per_image, C, patch, patch)."""
    n, c, h, w = level.shape
    m = n * per_image
    top = torch.randint(0, h - patch + 1, (m, 1, 1, 1), generator=generator)
    left = torch.randint(0, w - patch + 1, (m, 1, 1, 1), generator=generator)
    offs = torch.arange(patch)
    img = torch.arange(n).repeat_interleave(per_image).view(m, 1, 1, 1)
    chan = torch.arange(c).view(1, c, 1, 1)
    rows = (top + offs.view(1, 1, patch, 1)).to(level.device)
    cols = (left + offs.view(1, 1, 1, patch)).to(level.device)
    return level[img.to(level.device), chan.to(level.device), rows, cols]


def _normalise(desc: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per colour channel over all descriptors; then flatten."""
    mean = desc.mean(dim=(0, 2, 3), keepdim=True)
    std = desc.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-8)
    return ((desc - mean) / std).flatten(1)


def sliced_wasserstein_1d(
    a: torch.Tensor, b: torch.Tensor, projections: int, generator: torch.Generator
) -> float:
    """Mean over random unit directions of W1 between the 1-D projections of two equal-size
    point sets (sorted projections, mean absolute difference)."""
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    total, done = 0.0, 0
    while done < projections:
        k = min(PROJECTIONS_PER_ROUND, projections - done)
        dirs = torch.randn(a.shape[1], k, generator=generator, dtype=torch.float64)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device, a.dtype)
        pa = (a @ dirs).sort(dim=0).values
        pb = (b @ dirs).sort(dim=0).values
        total += float((pa - pb).abs().mean()) * k
        done += k
    return total / projections


def _descriptors(
    images: torch.Tensor | ImageSource | Iterable[torch.Tensor],
    levels: int,
    per_image: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[list[torch.Tensor], int]:
    if isinstance(images, torch.Tensor):
        check_uint8_images(images)
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    elif isinstance(images, ImageSource):
        batches = images.batches(batch_size)
    else:
        batches = iter(images)
    gen = torch.Generator().manual_seed(seed)
    per_level: list[list[torch.Tensor]] = [[] for _ in range(levels)]
    count = 0
    for batch in batches:
        pyr = laplacian_pyramid(batch.to(device), levels)
        for i, level in enumerate(pyr):
            per_level[i].append(random_patches(level, per_image, gen))
        count += batch.shape[0]
    return [torch.cat(d) for d in per_level], count


def sliced_wasserstein(
    gen: torch.Tensor | str | ImageSource,
    ref: torch.Tensor | str | ImageSource,
    *,
    patches_per_image: int = PATCHES_PER_IMAGE,
    projections: int = PROJECTIONS,
    min_resolution: int = MIN_RESOLUTION,
    num: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Multi-scale SWD between two sets of uint8 images (tensors, folders or .npz).

    Returns ``{"swd": {"<res>": x, ..., "avg": x}, "swd_scale": 1000, "n_gen", "n_ref",
    "swd_patches_per_image", "swd_projections"}``, levels finest first, values x1e3.
    The sets must share a resolution; with unequal counts the larger set's descriptors are
    subsampled (seeded) to the smaller count, since the distance pairs sorted projections.
    """
    sources = []
    for x in (gen, ref):
        if isinstance(x, torch.Tensor):
            check_uint8_images(x)
            sources.append(x[:num] if num else x)
        else:
            sources.append(x if isinstance(x, ImageSource) else open_images(x, num))
    sizes = [tuple(s.shape[-2:]) if isinstance(s, torch.Tensor) else s.size for s in sources]
    if sizes[0] != sizes[1]:
        raise UsageError(
            f"SWD needs GEN and REF at one resolution, got {sizes[0][0]}x{sizes[0][1]} "
            f"and {sizes[1][0]}x{sizes[1][1]}"
        )
    h, w = sizes[0]
    levels = pyramid_levels(h, w, min_resolution)
    dev = torch.device(device)
    # Bound the pyramid's memory at 1024-1536 px: about 2**26 pixel values per batch.
    batch_size = max(1, min(batch_size, (1 << 26) // (3 * h * w)))
    # The same seed on both sides: a set compared with itself scores exactly 0.
    desc_gen, n_gen = _descriptors(sources[0], levels, patches_per_image, batch_size, seed, dev)
    desc_ref, n_ref = _descriptors(sources[1], levels, patches_per_image, batch_size, seed, dev)
    sub = torch.Generator().manual_seed(seed + 1)
    proj = torch.Generator().manual_seed(seed + 2)
    result: dict[str, float] = {}
    for i, (a, b) in enumerate(zip(desc_gen, desc_ref, strict=True)):
        m = min(len(a), len(b))
        if len(a) > m:
            a = a[torch.randperm(len(a), generator=sub)[:m].to(a.device)]
        if len(b) > m:
            b = b[torch.randperm(len(b), generator=sub)[:m].to(b.device)]
        lh, lw = -(-h // 2**i), -(-w // 2**i)
        name = str(lh) if lh == lw else f"{lh}x{lw}"
        result[name] = SCALE * sliced_wasserstein_1d(
            _normalise(a), _normalise(b), projections, proj
        )
    result["avg"] = sum(result.values()) / len(result)
    return {
        "swd": result,
        "swd_scale": SCALE,
        "n_gen": n_gen,
        "n_ref": n_ref,
        "swd_patches_per_image": patches_per_image,
        "swd_projections": projections,
    }
