"""The scan's cases beyond the aligned, time-varying one, timed per element against it and
against ``ref``: tail lanes, grouped, fixed B/C, the last state, complex A (ref).

    python benchmarks/scan_cases.py [--length 2048] [--threads 1] [--lib PATH] [--out FILE.md]

``--lib`` times a prebuilt kernel (e.g. the AVX2 build, ``cbuild.build(scan_cpu.SOURCE,
arch_flags=(["-march=haswell"],))``) instead of this machine's native one. Prints (and with
``--out`` writes) a markdown table: median ns per (batch, channel, step) element of the forward
and of forward + backward, the IQR, and the ratio to the aligned case of the same backend.
Times are the process's CPU time (the machine is shared: other processes' load does not count,
though it still shares the caches), so run with one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dimbench.ops import scan_cpu, selective_scan

N = 16
# name: (dim, groups, fixed B, fixed C, last state, complex A)
CASES = {
    "aligned D=96": (96, None, False, False, False, False),
    "aligned D=112": (112, None, False, False, False, False),
    "tail lanes D=100": (100, None, False, False, False, False),
    "grouped G=2, D=96 (48 each)": (96, 2, False, False, False, False),
    "grouped G=4, D=96 (24 each: tails)": (96, 4, False, False, False, False),
    "fixed B, D=96": (96, None, True, False, False, False),
    "fixed C, D=96": (96, None, False, True, False, False),
    "fixed B and C, D=96": (96, None, True, True, False, False),
    "last state, D=96": (96, None, False, False, True, False),
    "complex A, D=96": (96, None, False, False, False, True),
}


def inputs(dim, groups, fixed_b, fixed_c, cplx, batch, length, grad):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    A = -0.5 - torch.rand(dim, N, generator=g)
    if cplx:
        A = torch.complex(A, r(dim, N))
    steps = 2 * length if cplx else length  # real pairs

    def bc(fixed):
        if fixed:
            return torch.complex(r(dim, N), r(dim, N)) if cplx else r(dim, N)
        return r(batch, N, steps) if groups is None else r(batch, groups, N, steps)

    ts = [r(batch, dim, length), 0.1 * torch.rand(batch, dim, length, generator=g), A,
          bc(fixed_b), bc(fixed_c), r(dim), r(batch, dim, length), 0.1 * r(dim)]  # fmt: skip
    return [t.requires_grad_(grad) for t in ts]


def time_case(case, backend, batch, length, repeats, backward):
    dim, groups, fb, fc, last, cplx = case
    ts = inputs(dim, groups, fb, fc, cplx, batch, length, backward)

    def call():
        res = selective_scan(*ts[:5], ts[5], ts[6], ts[7], True, return_last_state=last,
                             backend=backend)  # fmt: skip
        out = res[0] if last else res
        if backward:
            out.sum().backward()

    call()  # warm-up (and the kernel's build)
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        call()
        samples.append(time.process_time() - t0)
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    per = 1e9 / (batch * dim * length)
    return statistics.median(samples) * per, (q[2] - q[0]) * per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--ref-length", type=int, default=256, help="ref's loop is slow")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lib", type=Path, help="a prebuilt kernel to time instead of the native one")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.lib:
        lib = scan_cpu.load(args.lib)
        scan_cpu._lib = lambda: lib
    lines = [
        f"lanes {scan_cpu.lanes()}, threads {args.threads}, batch {args.batch}, N {N}; "
        f"process CPU ns per element (batch x channel x step), median (IQR) of {args.repeats} "
        "(ref: of 2)",
        "",
        "| case | backend | L | forward ns/elem | ratio | fwd+bwd ns/elem | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    base: dict[str, tuple[float, float]] = {}
    for name, case in CASES.items():
        backends = ["ref"] if case[5] else ["cpu", "ref"]
        for backend in backends:
            length = args.length if backend == "cpu" else args.ref_length
            reps = args.repeats if backend == "cpu" else 2
            fwd = time_case(case, backend, args.batch, length, reps, False)
            both = time_case(case, backend, args.batch, length, reps, True)
            base.setdefault(backend, (fwd[0], both[0]))
            lines.append(
                f"| {name} | {backend} | {length} | {fwd[0]:.2f} ({fwd[1]:.2f}) | "
                f"{fwd[0] / base[backend][0]:.2f} | {both[0]:.2f} ({both[1]:.2f}) | "
                f"{both[0] / base[backend][1]:.2f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
