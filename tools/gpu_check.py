"""GPU runbook: the Triton selective scan checked and timed, then the paper-model sweeps, in
one command under a deadline (< 8 minutes). A script, not part of the installed library.

    python tools/gpu_check.py --out results/<gpu>/

On a lent device machine (the repo copied there, torch and triton installed but not dimbench;
files come back from $OUT, so everything goes back as one archive; about 8 minutes):

    python3 -m pip install -q --no-deps --no-build-isolation -e . && PYTHONUNBUFFERED=1 \\
      python3 tools/gpu_check.py 2>&1 | tee gpu_check.log; \\
      tar czf $OUT/results.tgz results gpu_check.log cuda_tests.xml

Stages, in order; each is fail-soft (an exception is recorded and the next stage runs) and a
deadline (--deadline-s) stops new work and cuts a running sweep short (its finished rows stay,
and a rerun with the same --out resumes it):

 1. environment: GPU, torch, triton, which scan/conv backends ``auto`` picks on CUDA;
 2. correctness: the CUDA-marked tests (``pytest -m cuda tests/ops/test_ops_triton.py``): every GPU
    scan backend (outputs and all gradients) and the fused conv against the float64
    references, fp32 and bf16, delta from 1e-4 to 10, L up to 9806;
 3. copy bandwidth: a 1 GiB device-to-device copy (bytes read + written per second);
 4. tuning: forward and backward launch configs (channels per program, register cap) at
    L = 4494, the best exported as $DIMBENCH_TRITON_SCAN for everything after;
 5. scan timing: forward and forward+backward, B in {1, 8}, D in {2048, 3072}, N = 16,
    L in {366, 1230, 4494, 9806} (DiM's token counts at 256-1536 px), bf16, DiM's options;
    compulsory bytes / time against the copy bandwidth (the scan is memory-bound: % of
    roofline); mamba_ssm too where it is installed;
 6. ``dimbench run throughput`` then ``dimbench run memory``: DiM-L/2, DiM-H/2, DiT-XL/2,
    U-ViT-H/2 at 256-1536 px, bf16, batch 1 then batch 8 (so a cut-off loses batch 8 first);
 7. ``dimbench plot`` and this check's own files: scan_check.json (everything above),
    scan_bench.csv, scan_roofline.png and gpu_check.md (the tables for the notes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

MODELS = ("DiM-L/2", "DiM-H/2", "DiT-XL/2", "U-ViT-H/2")
RESOLUTIONS = (256, 512, 1024, 1536)
TOKENS = (366, 1230, 4494, 9806)  # DiM-L/2 and DiM-H/2 sequence lengths at those resolutions
BATCHES = (1, 8)
DIMS = (2048, 3072)  # expanded widths E of DiM-L/2 and DiM-H/2
D_STATE = 16
TUNE_LENGTH = 4494
# (channels per program = warps, register cap): the built-in default first
FWD_CANDIDATES = [(4, None), (2, None), (8, None), (4, 168), (4, 128), (8, 168)]
BWD_CANDIDATES = [(4, None), (2, None), (8, None), (4, 168)]


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- helpers


def make_inputs(batch, dim, length, n, groups=None, dtype=None, device="cuda", seed=0):
    """Mamba-like random inputs; delta log-uniform in [1e-4, 10]; A, D, bias in float32."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    lo, hi = math.log(1e-4), math.log(10.0)
    bdl = (batch, dim, length)
    kw = {"generator": g, "device": device}
    x = {
        "u": torch.randn(bdl, **kw),
        "delta": torch.exp(lo + (hi - lo) * torch.rand(bdl, **kw)),
        "A": -torch.exp(torch.randn(dim, n, **kw)),
        "B": torch.randn(bc, **kw),
        "C": torch.randn(bc, **kw),
        "D": torch.randn(dim, **kw),
        "z": torch.randn(bdl, **kw),
        "delta_bias": 0.5 * torch.randn(dim, **kw),
    }
    dtype = dtype or torch.float32
    return {
        k: v.to(device=device, dtype=torch.float32 if k in ("A", "D", "delta_bias") else dtype)
        for k, v in x.items()
    }


def scan_bytes(batch, dim, length, n, elem: int, backward: bool) -> int:
    """Compulsory traffic: each input read once, each output written once.

    Forward: u, delta, z in, out written (B*D*L each) and B, C in (B*N*L each). Backward adds
    u, delta, z, dout read and du, ddelta, dz written, B, C read and dB, dC written.
    """
    bdl, bnl = batch * dim * length, batch * n * length
    fwd = (4 * bdl + 2 * bnl) * elem
    return fwd + (7 * bdl + 4 * bnl) * elem if backward else fwd


def cuda_time_ms(fn, warmup: int = 2, repeats: int = 10, budget_s: float = 1.5) -> dict:
    from dimbench.measure.timing import make_clock, time_fn

    clock = make_clock("cuda")
    t = time_fn(fn, warmup=warmup, repeats=repeats, budget_s=budget_s, clock=clock)
    return {"median_ms": t.median_ms, "iqr_ms": t.iqr_ms, "samples_ms": t.samples_ms}


# --------------------------------------------------------------------------- stages


def stage_environment() -> dict:
    import torch

    from dimbench.ops import conv_backends, scan_backends
    from dimbench.ops.backends import resolve
    from dimbench.ops.triton_util import triton_version

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "sms": props.multi_processor_count,
        "memory_gb": props.total_memory / 2**30,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version(),
        "scan_backends_cuda": scan_backends("cuda"),
        "scan_auto_cuda": resolve("scan", "auto", "cuda"),
        "conv_backends_cuda": conv_backends("cuda"),
    }


def stage_correctness() -> dict:
    """The CUDA-marked kernel tests (tests/ops/test_ops_triton.py: every GPU scan backend and the
    fused conv against float64, outputs and gradients, fp32 and bf16, L up to 9806)."""
    root = Path(__file__).resolve().parents[1]
    report = root / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/ops/test_ops_triton.py"]
    proc = subprocess.run(
        [*cmd, f"--junitxml={report}"], cwd=root, capture_output=True, text=True, timeout=600
    )
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    for line in tail:
        log(f"correctness: {line}")
    return {"command": " ".join(cmd), "returncode": proc.returncode, "all_ok": proc.returncode == 0,
            "summary": tail[-1] if tail else ""}  # fmt: skip


def stage_bandwidth() -> dict:
    import torch

    n = 2**28  # 1 GiB of float32
    src = torch.empty(n, device="cuda").uniform_()
    dst = torch.empty_like(src)
    t = cuda_time_ms(lambda: dst.copy_(src), warmup=3, repeats=20, budget_s=2.0)
    bytes_moved = 2 * src.numel() * src.element_size()
    return {**t, "bytes": bytes_moved, "copy_gbps": bytes_moved / (t["median_ms"] * 1e6)}


def _scan_args(batch, dim, length, dtype, seed=0):
    x = make_inputs(batch, dim, length, D_STATE, None, dtype, seed=seed)
    return [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


def stage_tune(deadline: Deadline) -> dict:
    """Time the launch-config candidates at L = 4494, B = 1 and 8; export the fastest."""
    import torch

    from dimbench.ops import scan_triton

    shapes = [(1, DIMS[0], TUNE_LENGTH), (8, DIMS[0], TUNE_LENGTH)]
    inputs = [_scan_args(*s, torch.bfloat16) for s in shapes]
    result = {"shapes": shapes, "fwd": [], "bwd": []}
    for block, maxnreg in FWD_CANDIDATES:
        if deadline.left() < 0:
            break
        c = scan_triton.LaunchConfig(block, maxnreg)
        ms = [
            cuda_time_ms(lambda a=a, c=c: scan_triton.scan_fwd(*a, True, False, c))["median_ms"]
            for a in inputs
        ]
        result["fwd"].append({"block": block, "maxnreg": maxnreg, "ms": ms})
    saved = [scan_triton.scan_fwd(*a, True, True)[1] for a in inputs]
    gouts = [torch.randn_like(a[0]) for a in inputs]
    for block, maxnreg in BWD_CANDIDATES:
        if deadline.left() < 0:
            break
        c = scan_triton.LaunchConfig(block, maxnreg)
        ms = [
            cuda_time_ms(lambda a=a, s=s, g=g, c=c: scan_triton.scan_bwd(g, *a, True, s, c))[
                "median_ms"
            ]
            for a, s, g in zip(inputs, saved, gouts, strict=True)
        ]
        result["bwd"].append({"block": block, "maxnreg": maxnreg, "ms": ms})
    parts = []
    for kind in ("fwd", "bwd"):
        if result[kind]:
            best = min(result[kind], key=lambda r: sum(r["ms"]))
            parts.append(f"{kind}={best['block']}")
            if best["maxnreg"]:
                parts.append(f"{kind}_maxnreg={best['maxnreg']}")
    spec = ",".join(parts)
    os.environ[scan_triton.CONFIG_ENV] = spec
    log(f"tuned: {scan_triton.CONFIG_ENV}={spec}")
    result["chosen"] = spec
    return result


def stage_scan_timing(copy_gbps: float | None, deadline: Deadline) -> list[dict]:
    import torch

    from dimbench.ops import scan_backends, selective_scan

    backends = [b for b in ("triton", "mamba_ssm") if b in scan_backends("cuda")]
    rows = []
    for batch in BATCHES:
        for dim in DIMS:
            for length in TOKENS:
                if deadline.left() < 0:
                    log("scan timing: deadline reached")
                    return rows
                args = _scan_args(batch, dim, length, torch.bfloat16)
                gout = torch.randn_like(args[0])
                for backend in backends:

                    def fwd(backend=backend, args=args):
                        with torch.no_grad():
                            selective_scan(*args, delta_softplus=True, backend=backend)

                    leaves = [a.detach().requires_grad_() for a in args]

                    def fwd_bwd(backend=backend, leaves=leaves, gout=gout):
                        for t in leaves:
                            t.grad = None
                        out = selective_scan(*leaves, delta_softplus=True, backend=backend)
                        out.backward(gout)

                    for mode, fn in (("forward", fwd), ("forward+backward", fwd_bwd)):
                        t = cuda_time_ms(fn)
                        nbytes = scan_bytes(batch, dim, length, D_STATE, 2, mode != "forward")
                        gbps = nbytes / (t["median_ms"] * 1e6)
                        row = {
                            "backend": backend,
                            "mode": mode,
                            "batch": batch,
                            "dim": dim,
                            "length": length,
                            "d_state": D_STATE,
                            "dtype": "bf16",
                            "median_ms": t["median_ms"],
                            "iqr_ms": t["iqr_ms"],
                            "bytes": nbytes,
                            "gbps": gbps,
                            "pct_of_copy_bw": 100 * gbps / copy_gbps if copy_gbps else None,
                            "samples_ms": t["samples_ms"],
                        }
                        rows.append(row)
                        log(
                            f"{backend} {mode} B={batch} D={dim} L={length}: "
                            f"{t['median_ms']:.3f} ms, {gbps:.0f} GB/s"
                            + (f" ({row['pct_of_copy_bw']:.0f}% of copy)" if copy_gbps else "")
                        )
                del args, gout, leaves
                torch.cuda.empty_cache()
    return rows


def run_cli(args: list[str], timeout: float) -> dict:
    """``dimbench ARGS`` in a subprocess, killed at ``timeout`` (finished rows are kept)."""
    cmd = [sys.executable, "-m", "dimbench.cli", *args]
    log("$ dimbench " + " ".join(args))
    t0 = time.monotonic()
    if timeout <= 5:
        return {"cmd": args, "skipped": "no time left"}
    try:
        res = subprocess.run(cmd, timeout=timeout)
        return {"cmd": args, "returncode": res.returncode, "seconds": time.monotonic() - t0}
    except subprocess.TimeoutExpired:
        log(f"cut off after {timeout:.0f} s (rerun the same command to resume)")
        return {"cmd": args, "timed_out": True, "seconds": time.monotonic() - t0}


def sweep_args(suite: str, batch: int, out: Path) -> list[str]:
    args = [
        "run",
        suite,
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--batch-size",
        str(batch),
        "--res",
        *map(str, RESOLUTIONS),
        "--models",
        *MODELS,
        "--timeout",
        "150",
        "--out",
        str(out),
    ]
    if suite == "throughput":
        args += ["--warmup", "2", "--repeats", "5", "--budget", "1.0"]
    return args


# --------------------------------------------------------------------------- reports


def write_reports(report: dict, out: Path) -> None:
    import csv

    rows = report.get("scan_timing") or []
    if rows:
        keys = [k for k in rows[0] if k != "samples_ms"]
        with open(out / "scan_bench.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        _plot_roofline(rows, report, out / "scan_roofline.png")
    (out / "scan_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(_markdown(report))


def _plot_roofline(rows: list[dict], report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("forward", "forward+backward"), strict=True):
        for (backend, batch, dim), style in _series(rows):
            pts = [
                r
                for r in rows
                if (r["backend"], r["batch"], r["dim"], r["mode"]) == (backend, batch, dim, mode)
            ]
            ys = [r["pct_of_copy_bw"] or 0 for r in pts]
            ax.plot([r["length"] for r in pts], ys, style, label=f"{backend} B={batch} D={dim}")
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(TOKENS, [str(t) for t in TOKENS])
        ax.set_xlabel("sequence length L (tokens)")
        ax.set_title(f"selective scan {mode}, bf16, N={D_STATE}")
    axes[0].set_ylabel("% of device copy bandwidth")
    axes[1].legend(fontsize=7)
    gpu = (report.get("environment") or {}).get("gpu", "GPU")
    fig.suptitle(f"{gpu}: compulsory bytes / time vs copy bandwidth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(rows):
    seen = []
    for r in rows:
        key = (r["backend"], r["batch"], r["dim"])
        if key not in seen:
            seen.append(key)
    markers = "os^vD*"
    return [(k, ("-" if k[0] == "triton" else "--") + markers[i % 6]) for i, k in enumerate(seen)]


def _markdown(report: dict) -> str:
    env = report.get("environment") or {}
    lines = [
        f"# Triton selective scan on {env.get('gpu', '?')}",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}; "
        f"scan auto -> {env.get('scan_auto_cuda')}; conv backends {env.get('conv_backends_cuda')}",
        "",
    ]
    corr = report.get("correctness")
    if isinstance(corr, dict):
        verdict = "all ok" if corr["all_ok"] else "FAIL"
        lines += [f"Correctness vs float64 (`{corr['command']}`): {verdict}: {corr['summary']}"]
        lines.append("")
    bw = report.get("bandwidth")
    if isinstance(bw, dict):
        lines += [f"Device copy bandwidth: {bw['copy_gbps']:.0f} GB/s (read + write)", ""]
    tune = report.get("tune")
    if isinstance(tune, dict):
        lines += [f"Launch config chosen: {tune['chosen']}", ""]
    rows = report.get("scan_timing") or []
    if rows:
        lines += [
            "| backend | mode | B | D | L | ms | GB/s | % of copy bw |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            pct = f"{r['pct_of_copy_bw']:.0f}" if r["pct_of_copy_bw"] is not None else "-"
            lines.append(
                f"| {r['backend']} | {r['mode']} | {r['batch']} | {r['dim']} | {r['length']} "
                f"| {r['median_ms']:.3f} | {r['gbps']:.0f} | {pct} |"
            )
        lines.append("")
    for name in ("sweeps",):
        for s in report.get(name) or []:
            lines.append(f"- `dimbench {' '.join(s['cmd'])}`: {_sweep_status(s)}")
    errors = report.get("errors") or {}
    if errors:
        lines += ["", "Stages that failed:"]
        lines += [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in errors.items()]
    summary = Path(report["out"]) / "summary.md"
    if summary.exists():
        lines += ["", "## Sweep summary (dimbench plot)", "", summary.read_text()]
    return "\n".join(lines) + "\n"


def _sweep_status(s: dict) -> str:
    if "skipped" in s:
        return s["skipped"]
    if s.get("timed_out"):
        return f"cut off after {s['seconds']:.0f} s"
    return f"exit {s['returncode']} in {s['seconds']:.0f} s"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="results folder [results/<gpu>/]")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="whole run [420]")
    parser.add_argument("--skip-sweeps", action="store_true", help="scan checks only")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: needs a CUDA GPU", file=sys.stderr)
        return 2
    from dimbench.measure.metadata import machine_slug

    deadline = Deadline(args.deadline_s)
    out = args.out or Path("results") / machine_slug("cuda")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"out": str(out), "errors": {}, "sweeps": []}

    def stage(name, fn, *a):
        log(f"stage {name} ({deadline.left():.0f} s left)")
        t0 = time.monotonic()
        try:
            report[name] = fn(*a)
        except Exception:
            report[name] = None
            report["errors"][name] = traceback.format_exc()
            log(f"stage {name} FAILED:\n{report['errors'][name]}")
        report.setdefault("stage_seconds", {})[name] = time.monotonic() - t0
        write_reports(report, out)  # after every stage: a cut-off run keeps what it has

    stage("environment", stage_environment)
    stage("correctness", stage_correctness)
    stage("bandwidth", stage_bandwidth)
    stage("tune", stage_tune, deadline)
    copy_gbps = (report.get("bandwidth") or {}).get("copy_gbps")
    stage("scan_timing", stage_scan_timing, copy_gbps, deadline)
    torch.cuda.empty_cache()

    if not args.skip_sweeps:
        plan = [("throughput", 1, 0.30), ("throughput", 8, 0.45), ("memory", 1, 0.45)]
        plan += [("memory", 8, 1.0)]
        for suite, batch, share in plan:
            # each sweep gets its share of what is left, 20 s kept for the plots
            budget = (deadline.left() - 20) * share
            report["sweeps"].append(run_cli(sweep_args(suite, batch, out), budget))
            write_reports(report, out)
        if any(out.glob("*.csv")):
            report["sweeps"].append(run_cli(["plot", str(out), "--format", "png"], 120))
    write_reports(report, out)
    log(f"done: {out} ({deadline.left():.0f} s of the deadline left)")
    corr = report.get("correctness")
    return 0 if isinstance(corr, dict) and corr["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
