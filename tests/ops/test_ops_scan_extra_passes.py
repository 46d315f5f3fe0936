"""The cpu scan's slowdown knob (the speed gate's sensitivity check, tools/regress_eval.sh):
extra forward passes on the same output, fractions carried over, results unchanged."""

import os
import subprocess
import sys

import pytest
import torch

from dimbench.ops import scan_backends, scan_cpu, selective_scan
from tests.ops.test_ops_scan import make_inputs

pytestmark = pytest.mark.skipif("cpu" not in scan_backends("cpu"), reason="no cpu scan kernel")


def test_extra_passes_run_the_kernel_again_and_change_nothing(monkeypatch):
    inputs = make_inputs(1, 16, 40, 4, seed=3)
    expected = selective_scan(**inputs, backend="cpu")
    calls = []
    real = scan_cpu.Prepared.forward
    monkeypatch.setattr(
        scan_cpu.Prepared,
        "forward",
        lambda self, out, ckpt: calls.append(1) or real(self, out, ckpt),
    )
    try:
        scan_cpu.set_extra_passes(1.5)
        outs = [selective_scan(**inputs, backend="cpu") for _ in range(4)]
    finally:
        scan_cpu.set_extra_passes(0)
    assert len(calls) == 4 + 6  # 1.5 extra per call on average: 1, 2, 1, 2
    assert all(torch.equal(out, expected) for out in outs)
    calls.clear()
    selective_scan(**inputs, backend="cpu")
    assert len(calls) == 1
    with pytest.raises(ValueError, match=">= 0"):
        scan_cpu.set_extra_passes(-1)


def test_extra_passes_come_from_the_environment():
    code = "from dimbench.ops import scan_cpu; print(scan_cpu._EXTRA['passes'])"
    env = {**os.environ, scan_cpu.EXTRA_PASSES_ENV: "0.25"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "0.25", res.stderr[-2000:]
