"""The scan kernel's 8-lane AVX2 build (x86 without AVX-512), built and run on this machine:
the same cases as test_scan_cases against the float64 closed form, bf16 and channel-last too."""

import platform
import shutil
from pathlib import Path

import pytest
import torch

from dimbench.ops import cbuild, scan_cpu
from tests.ops.test_scan_cases import CASES, check, make


def _runs_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64"
    or not _runs_avx2()
    or not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="needs an x86 CPU with AVX2 and a C++ compiler",
)


@pytest.fixture(scope="module")
def avx2_lib():
    lib = scan_cpu.load(cbuild.build(scan_cpu.SOURCE, arch_flags=(["-march=haswell"],)))
    assert lib.dimbench_scan_lanes() == 8
    return lib


@pytest.fixture
def on_avx2(avx2_lib, monkeypatch):
    monkeypatch.setattr(scan_cpu, "_lib", lambda: avx2_lib)


@pytest.mark.parametrize("case", ["tail lanes", "groups 5 of 8", "fixed B and C, tail",
                                  "two chunks, N = 16"])  # fmt: skip
def test_avx2_build_matches_the_closed_form(on_avx2, case):
    check(make(**CASES[case]), "cpu", torch.float32, 2e-5)


@pytest.mark.parametrize("layout", ["channel-major", "channel-last"])
def test_avx2_build_bf16_matches_the_native_build(on_avx2, layout, monkeypatch):
    u, delta, A, B, C, D, z, bias = (t.float() for t in make(dim=40, length=150, n=16))
    if layout == "channel-last":
        u, delta, z = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (u, delta, z))
    u, delta, z = (t.bfloat16() for t in (u, delta, z))
    out = scan_cpu.forward(u, delta, A, B, C, D, z, bias, True, False)[0]
    monkeypatch.undo()  # the native build
    native = scan_cpu.forward(u, delta, A, B, C, D, z, bias, True, False)[0]
    # one bf16 rounding apart at most (the two builds sum in different orders)
    assert ((out.float() - native.float()).abs() <= 1e-2 * native.float().abs() + 1e-2).all()
