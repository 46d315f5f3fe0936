"""Summarise a kernel benchmark run (pytest-benchmark JSON of benchmarks/test_bench_kernels.py).

    pytest benchmarks/test_bench_kernels.py -m bench --benchmark-enable --benchmark-json=k.json
    dimbench kernel-report k.json --out kernels.md

For each length: every scan backend's median forward and forward+backward time, the speed-up
of each backend over ``ref`` measured in the same run, forward+backward over forward, and the
achieved GFLOP/s (dimbench's scan FLOP formula) beside the run's fp32 matmul GFLOP/s.
"""

from __future__ import annotations

import json
from pathlib import Path

from dimbench.errors import UsageError
from dimbench.ops.scan import scan_flops

DIM, DSTATE = 2048, 16  # the benchmark's shapes


def load(path: str | Path) -> list[dict]:
    """The benchmarks of a pytest-benchmark JSON file (UsageError for another file)."""
    try:
        data = json.loads(Path(path).read_text())
        return [
            {**b["extra_info"], "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"]}
            for b in data["benchmarks"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{path} is not a pytest-benchmark JSON of benchmarks/ ({type(e).__name__}: {e})"
        ) from None


def report(rows: list[dict]) -> str:
    bf16 = [r for r in rows if r.get("dtype") == "bf16"]
    deltas = [r for r in rows if r.get("kernel") == "scan-deltas"]
    rows = [r for r in rows if r.get("dtype", "fp32") == "fp32"]  # the tables below: float32
    matmul = [r for r in rows if r.get("kernel") == "matmul"]
    matmul_gflops = matmul[0]["flops"] / matmul[0]["median_s"] / 1e9 if matmul else None
    scans = {(r["backend"], r["length"], r["mode"]): r for r in rows if r.get("kernel") == "scan"}
    backends = sorted({b for b, _, _ in scans}, key=lambda b: (b == "ref", b))
    lines = [
        "| L | backend | forward ms | fwd+bwd ms | fwd+bwd / fwd | speed-up vs ref (fwd) "
        "| speed-up vs ref (fwd+bwd) | forward GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for length in sorted({n for _, n, _ in scans}):
        flops = scan_flops((1, DIM, length), (DIM, DSTATE), True, True, True, True)
        ref_f = scans.get(("ref", length, "forward"))
        ref_t = scans.get(("ref", length, "train"))
        for b in backends:
            f, t = scans.get((b, length, "forward")), scans.get((b, length, "train"))
            if f is None:
                continue
            cells = [
                str(length),
                b,
                f"{f['median_s'] * 1e3:.1f}",
                f"{t['median_s'] * 1e3:.1f}" if t else "-",
                f"{t['median_s'] / f['median_s']:.2f}" if t else "-",
                f"{ref_f['median_s'] / f['median_s']:.1f}x" if ref_f else "-",
                f"{ref_t['median_s'] / t['median_s']:.1f}x" if ref_t and t else "-",
                f"{flops / f['median_s'] / 1e9:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    only = {
        (r["length"], r["mode"]): r["median_s"]
        for r in rows
        if r.get("kernel") == "scan-kernel-only"
    }
    if only:
        lines += [
            "",
            "The cpu kernel alone (buffers allocated once; the calls above also pay for fresh "
            "outputs, three (B, D, L) gradients in the backward):",
            "",
            "| L | forward ms | backward ms | (fwd+bwd) / fwd | forward GFLOP/s |",
            "|---|---|---|---|---|",
        ]
        for length in sorted({n for n, _ in only}):
            f, b = only.get((length, "forward")), only.get((length, "backward"))
            if f is None or b is None:
                continue
            flops = scan_flops((1, DIM, length), (DIM, DSTATE), True, True, True, True)
            lines.append(
                f"| {length} | {f * 1e3:.1f} | {b * 1e3:.1f} | {(f + b) / f:.2f} "
                f"| {flops / f / 1e9:.1f} |"
            )
    if bf16:
        lines += ["", "bfloat16 activations (cpu):", "", "| L | mode | op ms | kernel-only ms |"]
        lines.append("|---|---|---|---|")
        ops = {(r["length"], r["mode"]): r["median_s"] for r in bf16 if r["kernel"] == "scan"}
        kern = {
            (r["length"], r["mode"]): r["median_s"]
            for r in bf16
            if r["kernel"] == "scan-kernel-only"
        }
        for length, mode in sorted(set(ops) | set(kern)):
            cells = [ops.get((length, mode)), kern.get((length, mode))]
            text = [f"{c * 1e3:.1f}" if c is not None else "-" for c in cells]
            lines.append(f"| {length} | {mode} | {text[0]} | {text[1]} |")
    if deltas:
        base = next((r["median_s"] for r in deltas if r.get("deltas") == "U(0,1)"), None)
        lines += ["", "cpu forward by delta distribution (no input-dependent cliff: ~1x):", ""]
        lines += ["| L | deltas | forward ms | vs U(0,1) |", "|---|---|---|---|"]
        for r in deltas:
            ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {r['length']} | {r['deltas']} | {r['median_s'] * 1e3:.1f} | {ratio} |")
    if matmul_gflops is not None:
        lines.append("")
        lines.append(f"fp32 matmul (2048^3) in the same run: {matmul_gflops:.0f} GFLOP/s.")
    return "\n".join(lines)
