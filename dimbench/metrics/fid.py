"""FID and KID on Inception-v3 features, with reference statistics computed once and cached.

The metrics are torchmetrics' ``FrechetInceptionDistance`` and ``KernelInceptionDistance``
with dimbench's offline extractor plugged in as their feature module
(:mod:`dimbench.metrics.inception`). Two small subclasses add what a benchmark needs and
torchmetrics lacks: feeding features computed once (one Inception pass serves FID, KID
and the cache; Inception costs ~0.3 s per image on a CPU) and loading reference
statistics from a file (ADM / U-ViT ``mu``/``sigma`` .npz, or a dimbench cache file).

A statistics .npz (``FeatureStats.save``) holds ``mu``, ``sigma``, ``n``, ``extractor`` and,
for cache files, the features themselves (float32, for KID). FID on few samples is biased
upwards (the 2048x2048 covariance is rank-deficient below 2048 samples): always report
``n_gen`` / ``n_ref`` and compare runs only at equal sample counts.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from dimbench.errors import UsageError
from dimbench.metrics.images import (
    ImageSource,
    check_uint8_images,
    npz_array_shape,
    npz_keys,
    open_images,
)
from dimbench.metrics.inception import (
    InceptionFeatureExtractor,
    extractor_sha1,
    load_extractor,
    same_extractor,
)

# Bump when the preprocessing or the cache layout changes: old cache files stop matching.
CACHE_VERSION = 1

ImageInput = torch.Tensor | str | Path | ImageSource


# --- the Frechet distance -------------------------------------------------------------------


def frechet_distance(mu1, sigma1, mu2, sigma2, *, features1=None, features2=None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:
    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)``.

    ``tr sqrt(sigma1 sigma2)`` is the sum of square roots of the eigenvalues of a symmetric
    PSD matrix with the same nonzero spectrum, so ``eigvalsh`` applies: it stays exact on
    the singular covariances of small sample sets, where ``scipy.linalg.sqrtm`` of the
    non-symmetric product can turn complex, and is faster than a general eigen-solver.
    With the features of a side at hand (``featuresK``, (n, d), n <= d), sigma_K =
    A^T A / (n - 1) for the centred features A, and the matrix is the small
    ``A sigma_other A^T / (n - 1)`` (n x n); otherwise it is ``s1^1/2 sigma2 s1^1/2``.
    """
    m1, m2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu {tuple(m1.shape)} / {tuple(m2.shape)}, "
            f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}"
        )
    if not all(torch.isfinite(t).all() for t in (m1, m2, s1, s2)):
        raise ValueError("non-finite values in mu or sigma")
    low_rank = [
        (torch.as_tensor(np.asarray(f), dtype=torch.float64), other)
        for f, other in ((features1, s2), (features2, s1))
        if f is not None and 2 <= len(f) <= d
    ]
    if low_rank:
        a, other = min(low_rank, key=lambda pair: len(pair[0]))
        a = a - a.mean(0)
        inner = a @ other @ a.T / (len(a) - 1)
    else:
        w, v = torch.linalg.eigh((s1 + s1.T) / 2)
        root1 = (v * _significant(w).sqrt()) @ v.T
        inner = root1 @ s2 @ root1
    tr_covmean = _significant(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = m1 - m2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_covmean)


def _significant(eigvals: torch.Tensor) -> torch.Tensor:
    """Zero the eigenvalues that are rounding noise (below ``d * eps * max``, the rank
    tolerance numpy uses). With fewer samples than dimensions the covariance is singular,
    and the square roots of thousands of ~1e-16-relative noise eigenvalues would otherwise
    add up to a visible error (a set against itself would not score 0)."""
    tol = eigvals.abs().max() * eigvals.shape[0] * torch.finfo(eigvals.dtype).eps
    return torch.where(eigvals > tol, eigvals, torch.zeros_like(eigvals))


# --- statistics and their files -------------------------------------------------------------


@dataclass
class FeatureStats:
    """Gaussian statistics of a feature set; ``features`` kept when known (KID needs them)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    extractor: str | None  # None: external statistics (ADM / U-ViT files say nothing)
    features: np.ndarray | None = None
    origin: str = "computed"  # computed | cache | file

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray, extractor: str) -> FeatureStats:
        f = np.asarray(torch.as_tensor(features).detach().cpu(), dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise UsageError(f"statistics need at least 2 feature vectors, got {f.shape[0]}")
        return cls(
            mu=f.mean(axis=0),
            sigma=np.cov(f, rowvar=False),
            n=f.shape[0],
            extractor=extractor,
            features=f.astype(np.float32),
        )

    def save(self, path: str | Path) -> None:
        """Write an .npz (atomically: a half-written cache file is never read back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n or -1)}
        arrays["extractor"] = np.str_(self.extractor or "")
        if self.features is not None:
            arrays["features"] = self.features.astype(np.float32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, with_features: bool = False) -> FeatureStats:
        """Read dimbench stats or an ADM / U-ViT reference file (``mu``, ``sigma``)."""
        keys = npz_keys(path)
        if "mu" not in keys or "sigma" not in keys:
            raise UsageError(f"{path}: no 'mu' and 'sigma' arrays, not a statistics file")
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n"]) if "n" in keys else None
            if n is None and "arr_0" in keys:  # ADM reference batch: stats of these images
                n = int(npz_array_shape(path, "arr_0")[0])
            extractor = str(z["extractor"]) if "extractor" in keys else ""
            feats = z["features"] if with_features and "features" in keys else None
            mu = z["mu"].astype(np.float64)
            sigma = z["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise UsageError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
        return cls(mu, sigma, n if n and n > 0 else None, extractor or None, feats, "file")


def is_stats_file(path: str | Path) -> bool:
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".npz"):
        return False
    keys = npz_keys(p)
    return "mu" in keys and "sigma" in keys


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dimbench" / "fid-stats"


def _check_extractor(stats: FeatureStats, extractor: InceptionFeatureExtractor, what: str) -> None:
    if stats.extractor is not None and not same_extractor(stats.extractor, extractor.id):
        raise UsageError(
            f"{what} statistics were computed with extractor {stats.extractor}, this run uses "
            f"{extractor.id}: recompute them with the same extractor (see --inception-weights)"
        )


# --- feature extraction ---------------------------------------------------------------------


def _batches(images: ImageInput, batch_size: int, num: int | None) -> tuple[Iterator, int]:
    if isinstance(images, torch.Tensor):
        check_uint8_images(images)
        images = images[:num] if num else images
        return (images[i : i + batch_size] for i in range(0, len(images), batch_size)), len(images)
    src = images if isinstance(images, ImageSource) else open_images(images, num)
    if num and src.count > num:
        src = open_images(src.path, num)
    return src.batches(batch_size), src.count


def extract_features(
    images: ImageInput,
    extractor: InceptionFeatureExtractor | None = None,
    batch_size: int = 50,
    num: int | None = None,
    progress: bool | str = False,
) -> torch.Tensor:
    """Inception features (N, 2048) float32 of uint8 images (a tensor, folder or .npz)."""
    extractor = extractor or load_extractor()
    batches, total = _batches(images, batch_size, num)
    out = [extractor(b) for b in _progress(batches, total, progress)]
    return torch.cat(out).cpu()


def _progress(batches: Iterable[torch.Tensor], total: int, label: bool | str) -> Iterator:
    if not label:
        yield from batches
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    desc = label if isinstance(label, str) else "Inception features"
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(desc, total=total)
        for b in batches:
            yield b
            bar.advance(task, len(b))


# --- reference statistics, cached -----------------------------------------------------------


def _cache_key(ref: ImageInput, extractor: InceptionFeatureExtractor, num: int | None) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{extractor_sha1(extractor.id)}|{num}".encode())
    if isinstance(ref, torch.Tensor):
        h.update(f"|tensor{tuple(ref.shape)}|".encode())
        h.update(ref.contiguous().cpu().numpy().tobytes())
    else:
        src = ref if isinstance(ref, ImageSource) else open_images(ref, num)
        h.update(src.fingerprint().encode())
    return h.hexdigest()


def cache_path(
    ref: ImageInput,
    extractor: InceptionFeatureExtractor,
    cache_dir: str | Path,
    num: int | None = None,
) -> Path:
    """Where the statistics of ``ref`` under ``extractor`` are (or would be) cached."""
    stem = "tensor" if isinstance(ref, torch.Tensor) else Path(getattr(ref, "path", ref)).stem
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "ref"
    return Path(cache_dir) / f"{safe}-{_cache_key(ref, extractor, num)[:16]}.npz"


def reference_stats(
    ref: ImageInput | FeatureStats,
    extractor: InceptionFeatureExtractor | None = None,
    cache_dir: str | Path | None = None,
    num: int | None = None,
    batch_size: int = 50,
    need_features: bool = False,
    progress: bool | str = False,
) -> FeatureStats:
    """Statistics of a reference set: read from a statistics .npz, from the cache, or
    computed (and then cached when ``cache_dir`` is given)."""
    extractor = extractor or load_extractor()
    if isinstance(ref, FeatureStats):
        _check_extractor(ref, extractor, "REF")
        if need_features and ref.features is None:
            raise UsageError("KID needs reference features; these statistics hold only mu/sigma")
        return ref
    if not isinstance(ref, torch.Tensor | ImageSource) and is_stats_file(ref):
        stats = FeatureStats.load(ref, with_features=need_features)
        _check_extractor(stats, extractor, f"REF {ref}")
        if not need_features or stats.features is not None:
            return stats
        if "arr_0" not in npz_keys(ref):  # ADM's files carry their images; U-ViT's do not
            raise UsageError(f"{ref}: holds only mu/sigma; KID needs reference images")
    path = cache_path(ref, extractor, cache_dir, num) if cache_dir is not None else None
    if path is not None and path.is_file():
        stats = FeatureStats.load(path, with_features=need_features)
        stats.origin = "cache"
        if stats.extractor and same_extractor(stats.extractor, extractor.id):
            if not need_features or stats.features is not None:
                return stats
    feats = extract_features(ref, extractor, batch_size, num, progress)
    stats = FeatureStats.from_features(feats, extractor.id)
    if path is not None:
        stats.save(path)
    return stats


# --- torchmetrics, fed with features --------------------------------------------------------


class FrechetDistance(FrechetInceptionDistance):
    """torchmetrics' FID that also accepts features and saved statistics.

    ``update(images, real)`` works as upstream (the extractor runs);
    ``update(real=..., features=f)`` takes features computed elsewhere and
    ``update(real=..., stats=s)`` pools saved (mu, sigma, n) into the accumulators. Going
    through ``update`` keeps torchmetrics' bookkeeping (result cache, sync) intact.
    ``compute`` evaluates the accumulated Gaussians with :func:`frechet_distance` (the same
    value as upstream's eigvals form to ~1e-9 relative). While a side has at most
    ``num_features`` samples, all given as features, they are kept too and the distance
    takes the exact small-matrix route (quick looks on a few hundred samples).
    """

    def __init__(self, extractor: InceptionFeatureExtractor, **kwargs) -> None:
        super().__init__(feature=extractor, reset_real_features=False, **kwargs)
        self.add_state("real_features_kept", [], dist_reduce_fx="cat")
        self.add_state("fake_features_kept", [], dist_reduce_fx="cat")

    def update(
        self,
        imgs: torch.Tensor | None = None,
        real: bool = True,
        *,
        features: torch.Tensor | None = None,
        stats: FeatureStats | None = None,
    ) -> None:
        if sum(x is not None for x in (imgs, features, stats)) != 1:
            raise ValueError("pass exactly one of imgs, features, stats")
        dev = self.real_features_sum.device
        side = "real" if real else "fake"
        if stats is not None:
            # compute() inverted: sum = n mu, cov_sum = (n - 1) sigma + n mu mu^T. External
            # files may not say n; any n >= 2 reproduces their mu and sigma exactly.
            n = stats.n or 2
            mu = torch.as_tensor(stats.mu, dtype=torch.float64, device=dev)
            sigma = torch.as_tensor(stats.sigma, dtype=torch.float64, device=dev)
            add_sum, add_cov = n * mu, (n - 1) * sigma + n * torch.outer(mu, mu)
        else:
            f = self.inception(imgs) if imgs is not None else features
            f = f.to(dev, torch.float64)
            n, add_sum, add_cov = f.shape[0], f.sum(0), f.T @ f
            kept = getattr(self, f"{side}_features_kept")
            if sum(len(k) for k in kept) + n <= self.real_features_sum.shape[0]:
                kept.append(f)
        for name, value in (("sum", add_sum), ("cov_sum", add_cov), ("num_samples", n)):
            attr = f"{side}_features_{name}"
            setattr(self, attr, getattr(self, attr) + value)

    def gaussian(self, real: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean, covariance and count accumulated for one side."""
        side = "real" if real else "fake"
        n = int(getattr(self, f"{side}_features_num_samples"))
        if n < 2:
            raise UsageError(f"FID needs at least 2 samples per set, got {n} ({side})")
        mean = getattr(self, f"{side}_features_sum") / n
        cov = (getattr(self, f"{side}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov, n

    def _kept(self, real: bool, n: int) -> torch.Tensor | None:
        kept = getattr(self, f"{'real' if real else 'fake'}_features_kept")
        kept = dim_zero_cat(kept) if len(kept) else None
        return kept.cpu() if kept is not None and len(kept) == n else None  # else: incomplete

    def compute(self) -> torch.Tensor:
        mu1, s1, n1 = self.gaussian(real=True)
        mu2, s2, n2 = self.gaussian(real=False)
        value = frechet_distance(
            mu1.cpu(), s1.cpu(), mu2.cpu(), s2.cpu(),
            features1=self._kept(True, n1), features2=self._kept(False, n2),
        )  # fmt: skip
        return torch.tensor(value, dtype=torch.float64)


class KernelDistance(KernelInceptionDistance):
    """torchmetrics' KID (unbiased polynomial-kernel MMD^2 over random subsets) that also
    accepts features (``update(real=..., features=f)``); the subset draw is seeded."""

    def __init__(self, extractor: InceptionFeatureExtractor, seed: int = 0, **kwargs) -> None:
        with warnings.catch_warnings():  # "will save all extracted features": that is the point
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(feature=extractor, **kwargs)
        self.seed = seed

    def update(
        self,
        imgs: torch.Tensor | None = None,
        real: bool = True,
        *,
        features: torch.Tensor | None = None,
    ) -> None:
        if (imgs is None) == (features is None):
            raise ValueError("pass exactly one of imgs, features")
        f = self.inception(imgs) if imgs is not None else features
        (self.real_features if real else self.fake_features).append(f.to(torch.float64))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().compute()


# --- the API the CLI and train-compare use --------------------------------------------------


def _gen_side(
    gen: ImageInput | FeatureStats,
    extractor: InceptionFeatureExtractor,
    batch_size: int,
    num: int | None,
    need_features: bool,
    progress: bool | str,
) -> FeatureStats:
    if isinstance(gen, FeatureStats) or (
        not isinstance(gen, torch.Tensor | ImageSource) and is_stats_file(gen)
    ):
        stats = gen if isinstance(gen, FeatureStats) else FeatureStats.load(gen, need_features)
        _check_extractor(stats, extractor, "GEN")
        if need_features and stats.features is None:
            raise UsageError("KID needs generated images or features, not mu/sigma only")
        return stats
    label = "GEN features" if progress else False
    feats = extract_features(gen, extractor, batch_size, num, label)
    return FeatureStats.from_features(feats, extractor.id)


def evaluate(
    gen: ImageInput | FeatureStats,
    ref: ImageInput | FeatureStats,
    *,
    extractor: InceptionFeatureExtractor | None = None,
    fid: bool = True,
    kid: bool = False,
    batch_size: int = 50,
    num: int | None = None,
    cache_dir: str | Path | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """FID and/or KID of ``gen`` against ``ref`` from one Inception pass per set.

    ``gen`` / ``ref``: uint8 (N, 3, H, W) tensors, image folders, .npz of images, or
    statistics (.npz path or :class:`FeatureStats`; KID needs features, not mu/sigma).
    ``num`` caps both image sets. Returns ``fid``, ``n_gen``, ``n_ref``, ``extractor``,
    ``ref_extractor`` (None for external statistics), ``ref_origin`` and, with ``kid``,
    ``kid_mean``, ``kid_std``, ``kid_subset_size``, ``kid_subsets``.
    """
    if not (fid or kid):
        raise UsageError("nothing to compute: ask for FID and/or KID")
    extractor = extractor or load_extractor()
    ref_stats = reference_stats(
        ref, extractor, cache_dir, num, batch_size, kid, "REF features" if progress else False
    )
    fid_ref = ref_stats
    if kid and isinstance(ref, str | Path) and is_stats_file(ref) and ref_stats.origin != "file":
        # An ADM reference batch: KID ran on its images, FID keeps the published mu/sigma.
        fid_ref = FeatureStats.load(ref)
    gen_stats = _gen_side(gen, extractor, batch_size, num, kid, progress)
    out: dict = {
        "n_gen": gen_stats.n,
        "n_ref": fid_ref.n if fid else ref_stats.n,
        "extractor": extractor.id,
        "ref_extractor": fid_ref.extractor if fid else ref_stats.extractor,
        "ref_origin": fid_ref.origin if fid else ref_stats.origin,
    }
    if fid:
        metric = FrechetDistance(extractor)
        for stats, real in ((fid_ref, True), (gen_stats, False)):
            if stats.features is not None and len(stats.features) <= metric.inception.num_features:
                metric.update(real=real, features=torch.from_numpy(stats.features))
            else:
                metric.update(real=real, stats=stats)
        out["fid"] = float(metric.compute())
    if kid:
        size = min(kid_subset_size, gen_stats.features.shape[0], ref_stats.features.shape[0])
        if size < 2:
            raise UsageError("KID needs at least 2 samples per set")
        metric = KernelDistance(extractor, seed=seed, subsets=kid_subsets, subset_size=size)
        metric.update(real=True, features=torch.from_numpy(ref_stats.features))
        metric.update(real=False, features=torch.from_numpy(gen_stats.features))
        mean, std = metric.compute()
        out |= {"kid_mean": float(mean), "kid_std": float(std)}
        out |= {"kid_subset_size": size, "kid_subsets": kid_subsets}
    return out


def compute_fid(gen, ref, *, extractor=None, **kwargs) -> dict:
    """FID of ``gen`` against ``ref``: ``dict(fid, n_gen, n_ref, extractor, ...)``.
    Arguments as :func:`evaluate`."""
    return evaluate(gen, ref, extractor=extractor, fid=True, **kwargs)


def compute_kid(gen, ref, *, extractor=None, **kwargs) -> dict:
    """KID of ``gen`` against ``ref``: ``dict(kid_mean, kid_std, n_gen, n_ref, ...)``."""
    return evaluate(gen, ref, extractor=extractor, fid=False, kid=True, **kwargs)
