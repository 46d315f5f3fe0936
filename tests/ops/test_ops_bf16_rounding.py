"""The two C++ kernels write bfloat16 by one rule (dimbench/ops/csrc/dimbench_simd.h) and run
with the same floating-point mode: their bf16 outputs on special values follow the rule, agree
with each other, and both kernels restore the caller's mode.

The values ride in as fp32 parameters multiplied by bf16 ones: the conv's weight (width 1, no
bias: out = w * 1) and the scan's D (B = C = 0, delta = 0: y = D * u), one value per channel.
24 channels (a vector of 16 and a partial one) by 20 steps (a tile of 16 and a tail) reach both
the vector and the scalar stores in both layouts.
"""

import pytest
import torch

from dimbench.ops import causal_conv1d, conv_backends, scan_backends, scan_cpu, selective_scan
from tests.ops.test_ops_scan import LAYOUTS, in_layout

pytestmark = pytest.mark.skipif(
    "cpu" not in scan_backends("cpu") or "cpu" not in conv_backends("cpu"),
    reason="no compiled cpu kernels here",
)

# (float32 bits, the bfloat16 bits the rule gives)
RULE = [
    (0x3F800000, 0x3F80),  # 1
    (0x3F808000, 0x3F80),  # halfway between 1 and the next: ties to even (down)
    (0x3F818000, 0x3F82),  # halfway, odd below: ties to even (up)
    (0x3F808001, 0x3F81),  # just above halfway: up
    (0xBF818000, 0xBF82),  # negative halfway
    (0x3FFFFFFF, 0x4000),  # rounding carries into the exponent
    (0x40200000, 0x4020),  # 2.5, exact
    (0x7F7F0000, 0x7F7F),  # the largest bfloat16
    (0x7F7F7FFF, 0x7F7F),  # just under half an ulp above it
    (0x7F7F8000, 0x7F80),  # half an ulp above it (odd): infinity
    (0x7F7FFFFF, 0x7F80),  # the largest float32: infinity
    (0xFF7FFFFF, 0xFF80),  # its negative: -infinity
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
    (0x7FC00000, 0x7FC0),  # NaN
    (0x7FC00001, 0x7FC0),  # NaN with its payload only in the low half
    (0xFFC12345, 0xFFC1),  # negative NaN: sign and top payload bits kept
    (0x7FA12345, 0x7FE1),  # signalling NaN: made quiet, payload kept
    (0x00800000, 0x0080),  # the smallest normal
    (0x00808000, 0x0080),  # halfway above it: ties to even
    (0x00400000, 0x0000),  # subnormal: zero
    (0x807FFFFF, 0x8000),  # negative subnormal: a zero of its sign
    (0x00000001, 0x0000),  # the smallest subnormal
    (0xC0400000, 0xC040),  # -3, exact
]
BITS = torch.tensor([b for b, _ in RULE], dtype=torch.int64).to(torch.int32)
VALUES = BITS.view(torch.float32)
EXPECTED = torch.tensor([e for _, e in RULE], dtype=torch.int32)
ZERO = (EXPECTED & 0x7FFF) == 0  # subnormals (and zeros): read as zero in the kernels
LENGTH = 20


def _bits(out: torch.Tensor) -> torch.Tensor:
    """(1, D, L) bfloat16 -> (D, L) int32 bit patterns."""
    return out[0].contiguous().view(torch.int16).to(torch.int32) & 0xFFFF


def conv_out(layout: str) -> torch.Tensor:
    x = in_layout({"u": torch.ones(1, len(RULE), LENGTH, dtype=torch.bfloat16)}, layout)["u"]
    return _bits(causal_conv1d(x, VALUES[:, None].clone(), None, None, backend="cpu"))


def scan_out(layout: str) -> torch.Tensor:
    dim, n = len(RULE), 4
    acts = {
        "u": torch.ones(1, dim, LENGTH, dtype=torch.bfloat16),
        "delta": torch.zeros(1, dim, LENGTH, dtype=torch.bfloat16),
    }
    acts = in_layout(acts, layout)
    out = selective_scan(
        **acts,
        A=-torch.ones(dim, n),
        B=torch.zeros(1, n, LENGTH),
        C=torch.zeros(1, n, LENGTH),
        D=VALUES.clone(),
        backend="cpu",
    )
    return _bits(out)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel", [conv_out, scan_out], ids=["conv", "scan"])
def test_bf16_outputs_follow_the_rule(kernel, layout):
    got = kernel(layout)
    expected = EXPECTED[:, None].expand_as(got)
    rows = ~ZERO
    assert torch.equal(got[rows], expected[rows]), [
        (hex(b), hex(e), sorted({hex(v) for v in g.tolist()}))
        for (b, e), g, keep in zip(RULE, got, rows, strict=True)
        if keep and not torch.equal(g, torch.full_like(g, e))
    ]
    # subnormals are read as zeros (DAZ) and w * 1 + 0 is +0 whatever the sign
    assert ((got[ZERO] & 0x7FFF) == 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_two_kernels_write_the_same_bits(layout):
    assert torch.equal(conv_out(layout), scan_out(layout))


@pytest.fixture
def one_thread():
    """The kernel runs in this thread; the flush setting is put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("flush", [False, True], ids=["caller-keeps-denormals", "caller-flushes"])
def test_conv_flushes_denormals_and_restores_the_callers_mode(one_thread, flush):
    """Both kernels read subnormals as zero (the scan's test: test_ops_scan) and put the
    caller's floating-point mode back."""
    if not scan_cpu.flushes_denormals():
        pytest.skip("no flush-to-zero control on this CPU")
    torch.set_flush_denormal(flush)
    x = torch.full((1, 16, 40), 1e-40).requires_grad_()
    w = torch.ones(16, 1, requires_grad=True)
    before = scan_cpu.fp_control()
    out = causal_conv1d(x, w, None, None, backend="cpu")
    out.backward(torch.full_like(out, 1e-40))
    assert scan_cpu.fp_control() == before
    assert (out == 0).all() and (x.grad == 0).all()
    assert (torch.tensor(1e-40) * 1 == 0) == flush  # the caller's own mode holds
