"""Max relative error against float64 of every selective_scan case (the inputs and the closed
form of tests/ops/test_scan_cases.py): the output, the last state and the worst input gradient,
as a markdown table. Run from the repository root: python benchmarks/scan_cases_accuracy.py
"""

from __future__ import annotations

import torch

from tests.ops.test_scan_cases import CASES, COMPLEX, make, run, run_closed


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.to(b.dtype) - b).abs().max() / b.abs().max()).item()


def errors(inputs, backend: str, dtype: torch.dtype) -> tuple[float, float, float]:
    """(out, last state, worst gradient) errors against the closed form of the rounded inputs."""
    out, state, grads, leaves = run(inputs, backend, dtype)
    seen = [t.detach().to(torch.complex128 if t.is_complex() else torch.float64) for t in leaves]
    ref_out, ref_state, ref_grads, _ = run_closed(seen, True)
    worst = max(rel(g, r) for g, r in zip(grads, ref_grads, strict=True))
    return rel(out, ref_out), rel(state, ref_state), worst


def main() -> None:
    rows = []
    for name, kw in CASES.items():
        for backend in ("cpu", "ref"):
            rows.append((name, backend, torch.float32, make(**kw)))
    for name, kw in COMPLEX.items():
        rows.append((f"complex A, {name}", "auto", torch.float32, make(length=11, cplx=True, **kw)))
    for dtype in (torch.bfloat16, torch.float16):
        for backend in ("cpu", "ref"):
            rows.append(("groups 2 of 10, tail", backend, dtype, make(dim=20, groups=2)))
    print("| case | backend | dtype | out | last state | worst gradient |")
    print("|---|---|---|---|---|---|")
    for name, backend, dtype, inputs in rows:
        o, s, g = errors(inputs, backend, dtype)
        dt = str(dtype).removeprefix("torch.")
        print(f"| {name} | {backend} | {dt} | {o:.1e} | {s:.1e} | {g:.1e} |")


if __name__ == "__main__":
    main()
