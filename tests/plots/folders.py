"""Result folders the plot tests draw from."""

from __future__ import annotations

from tests.rows import KEY, make_row, store_of


def scaling_folder(tmp_path, ips: dict | None = None) -> None:
    """A throughput/memory/flops folder where DiM starts slower and overtakes DiT between
    512 and 1024 px, and DiT runs out of memory at 1536."""
    tp, mem, fl = (store_of(tmp_path, s) for s in ("throughput", "memory", "flops"))
    ips = ips or {
        "DiM-T/2": {256: 10.0, 512: 3.0, 1024: 1.0, 1536: 0.5},
        "DiT-T/2": {256: 20.0, 512: 4.0, 1024: 0.5, 1536: None},
        "U-ViT-T/2": {256: 5.0, 512: 1.0, 1024: 0.2, 1536: 0.05},
    }
    for model, series in ips.items():
        fam = {"DiM": "dim", "DiT": "dit", "U-V": "uvit"}[model[:3]]
        for res, v in series.items():
            key = {**KEY, "model": model, "image_size": res}
            common = dict(family=fam, device_name="Test CPU", load_avg_1m=1.5)
            if v is None:
                tp.append(make_row(**key, status="oom", error="out of memory", **common))
                mem.append(make_row(**{**key, "suite": "memory"}, status="oom", **common))
            else:
                tp.append(make_row(**key, status="ok", imgs_per_s=v, latency_ms=1e3 / v, **common))
                mem.append(make_row(**{**key, "suite": "memory"}, status="ok", peak_mem_mb=res / 4))
            gmacs = (res / 16) ** 2 * (4 if fam == "dim" else (res / 256) ** 2)
            fl.append(
                make_row(
                    **{**key, "suite": "flops", "device": "meta"},
                    status="ok",
                    gmacs=gmacs,
                    gflops=2 * gmacs,
                )
            )
