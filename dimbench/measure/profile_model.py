"""One forward pass of a registered model under torch.profiler, time split by operator kind.

    python -m dimbench.measure.profile_model DiM-L/2 1536 --out results/<machine>/profile.json

Prints the breakdown (scan / conv / linear / other, overall and within the blocks) and writes
it as JSON with the run's metadata. A first unprofiled forward is the warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dimbench.measure.metadata import run_metadata
from dimbench.measure.op_breakdown import op_breakdown
from dimbench.registry import create_model


def profile_model(name: str, image_size: int, batch_size: int = 1, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create_model(name, image_size).eval()
    side = image_size // 8
    x = torch.randn(batch_size, model.in_channels, side, side)
    t = torch.full((batch_size,), 500)
    y = torch.zeros(batch_size, dtype=torch.long)

    def forward():
        with torch.no_grad():
            return model(x, t, y)

    t0 = time.perf_counter()
    forward()
    warmup_s = time.perf_counter() - t0
    blocks = getattr(model, "blocks", ())
    breakdown = op_breakdown(forward, group_modules=blocks)
    print(breakdown.format())
    return {
        "model": name,
        "image_size": image_size,
        "batch_size": batch_size,
        "dtype": "fp32",
        "scan_backend": getattr(model, "scan_backend", "-"),
        "warmup_forward_s": warmup_s,
        **breakdown.as_dict(),
        **run_metadata("cpu"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("image_size", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    result = profile_model(args.model, args.image_size, args.batch_size)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
