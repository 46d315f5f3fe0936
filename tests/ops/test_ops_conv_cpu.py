"""The "cpu" causal conv1d kernel against its twin: outputs and gradients, fp32 and bf16."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dimbench.ops import causal_conv1d, causal_conv1d_ref, conv_backends, conv_cpu
from dimbench.ops.conv import resolve_for
from dimbench.ops.layout import CHANNEL_LAST, CHANNEL_MAJOR

pytestmark = pytest.mark.skipif(
    "cpu" not in conv_backends("cpu"), reason="no compiled cpu conv kernel here"
)

LENGTHS = [1, 2, 3, 15, 16, 17, 31, 33, 100, 1230]
LAYOUTS = (CHANNEL_MAJOR, CHANNEL_LAST)


def in_layout(t, layout):
    """The same values; channel-last as a (B, L, D) tensor seen transposed (channel stride 1)."""
    return t if layout == CHANNEL_MAJOR else t.transpose(1, 2).contiguous().transpose(1, 2)


def assert_layout(t, layout):
    batch, dim, length = t.shape
    if min(dim, length) > 1:
        assert t.stride() == (in_layout(torch.empty(t.shape), layout).stride()), layout


def make(batch, dim, length, width, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(batch, dim, length, generator=g)
    w = torch.randn(dim, width, generator=g) / width**0.5
    b = torch.randn(dim, generator=g)
    return x, w, b


def reference(x, w, b, activation, grad_out):
    """float64 output and gradients of the twin, by autograd."""
    leaves = [t.double().requires_grad_() for t in (x, w)]
    bias = b.double().requires_grad_() if b is not None else None
    out = causal_conv1d_ref(*leaves, bias, activation)
    out.backward(grad_out.double())
    grads = [t.grad for t in leaves] + [bias.grad if bias is not None else None]
    return out.detach(), grads


def assert_close(actual, expected, rel, what):
    scale = expected.abs().max().item()
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * scale + 1e-6, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp32_matches_the_twin_with_gradients(length, width, activation, with_bias, layout):
    x, w, b = make(2, 37, length, width, seed=length * 7 + width)
    b = b if with_bias else None
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    leaves = [in_layout(x, layout).clone().requires_grad_(), w.clone().requires_grad_()]
    bias = b.clone().requires_grad_() if b is not None else None
    out = causal_conv1d(*leaves, bias, activation, backend="cpu")
    out.backward(in_layout(grad_out, layout))
    ref, ref_grads = reference(x, w, b, activation, grad_out)
    assert out.dtype == torch.float32
    assert_layout(out, layout)
    assert_layout(leaves[0].grad, layout)
    assert_close(out, ref, 2e-6, "out")
    for name, t, g in zip(("dx", "dw", "db"), (*leaves, bias), ref_grads, strict=True):
        if g is None:
            assert t is None
        else:
            assert_close(t.grad, g, 2e-6, name)


@pytest.mark.parametrize("width", [1, 5, 8, 17])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_other_widths_take_the_generic_path(width, layout):
    x, w, b = make(1, 19, 300, width, seed=width)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    leaves = [in_layout(x, layout).clone().requires_grad_()]
    leaves += [t.clone().requires_grad_() for t in (w, b)]
    out = causal_conv1d(*leaves, "silu", backend="cpu")
    out.backward(grad_out)
    ref, ref_grads = reference(x, w, b, "silu", grad_out)
    assert_close(out, ref, 2e-6, "out")
    for name, t, g in zip(("dx", "dw", "db"), leaves, ref_grads, strict=True):
        assert_close(t.grad, g, 2e-6, name)


@pytest.mark.parametrize("length", [1, 17, 1230, 9806])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_in_and_out_with_fp32_accumulation(length, activation, layout):
    """bf16 activations: the result is the fp32 computation on the same inputs, rounded once."""
    x, w, b = make(1, 24, length, 3, seed=length)
    x = x.to(torch.bfloat16)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    leaves = [in_layout(x, layout).clone().requires_grad_(), w.clone().requires_grad_()]
    bias = b.clone().requires_grad_()
    out = causal_conv1d(*leaves, bias, activation, backend="cpu")
    out.backward(grad_out)
    ref, ref_grads = reference(x.float(), w, b, activation, grad_out.float())
    assert out.dtype == torch.bfloat16 and leaves[0].grad.dtype == torch.bfloat16
    assert leaves[1].grad.dtype == torch.float32 and bias.grad.dtype == torch.float32
    # one bf16 rounding of the output (2^-8 relative); fp32 weight and bias gradients
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(leaves[0].grad.double(), ref_grads[0], rtol=2**-8, atol=1e-6)
    assert_close(leaves[1].grad, ref_grads[1], 1e-5, "dw")
    assert_close(bias.grad, ref_grads[2], 1e-5, "db")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_output_is_round_to_nearest_even_of_the_fp32_result(layout):
    x, w, b = make(2, 16, 203, 4, seed=5)
    xb = in_layout(x.to(torch.bfloat16), layout)
    out = causal_conv1d(xb, w, b, None, backend="cpu")
    exact = causal_conv1d(xb.float(), w, b, None, backend="cpu")
    assert torch.equal(out, exact.to(torch.bfloat16))


def test_long_rows_and_dims_of_dims_model():
    x, w, b = make(1, 64, 9806, 3, seed=9)
    out = causal_conv1d(x, w, b, "silu", backend="cpu")
    assert_close(out, causal_conv1d_ref(x.double(), w.double(), b.double(), "silu"), 2e-6, "out")


def test_strided_channel_views_are_read_in_place():
    """A channel slice of a larger (B, 2E, L) tensor (x of an in_proj output) is not copied."""
    x, w, b = make(3, 40, 77, 3, seed=4)
    x_view = x[:, :20]
    assert not x_view.is_contiguous()
    out = causal_conv1d(x_view, w[:20], b[:20], "silu", backend="cpu")
    expected = causal_conv1d_ref(x_view.contiguous(), w[:20], b[:20], "silu")
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # time-strided input (a transposed view) is made contiguous first
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(
        causal_conv1d(xt, w, b, "silu", backend="cpu"), causal_conv1d_ref(x, w, b, "silu")
    )


def test_channel_last_slices_of_one_projection_are_read_in_place():
    """x as the first half of a (B, L, 2D) in_proj output seen (B, D, L): out and dx come back
    channel-last (B, L, D) and equal the channel-major results; grad_out in either layout."""
    batch, dim, length = 2, 40, 77
    g = torch.Generator().manual_seed(14)
    xz = torch.randn(batch, length, 2 * dim, generator=g)
    x_view = xz[..., :dim].transpose(1, 2)
    _, w, b = make(batch, dim, length, 3, seed=14)
    grad = torch.randn(batch, dim, length, generator=g)
    dense = x_view.contiguous()
    dx_dense = conv_cpu.conv_backward(grad, dense, w, b, True)[0]
    ref, ref_grads = reference(dense, w, b, "silu", grad)
    out = causal_conv1d(x_view, w, b, "silu", backend="cpu")
    assert_layout(out, CHANNEL_LAST)
    torch.testing.assert_close(out, causal_conv1d(dense, w, b, "silu", backend="cpu"))
    assert_close(out, ref, 2e-6, "out")
    for grad_out in (grad, in_layout(grad, CHANNEL_LAST)):
        dx, dw, db = conv_cpu.conv_backward(grad_out, x_view, w, b, True)
        assert_layout(dx, CHANNEL_LAST)
        torch.testing.assert_close(dx, dx_dense, rtol=0, atol=0)
        for name, got, want in zip(("dx", "dw", "db"), (dx, dw, db), ref_grads, strict=True):
            assert_close(got, want, 2e-6, name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_implementations_give_the_kernels_strides(layout):
    x, w, b = make(2, 24, 30, 3, seed=15)
    x = in_layout(x, layout)
    real = torch.ops.dimbench.causal_conv1d_cpu(x, w, b, True)
    fake = torch.ops.dimbench.causal_conv1d_cpu(x.to("meta"), w.to("meta"), b.to("meta"), True)
    assert real.stride() == fake.stride()
    real_g = torch.ops.dimbench.causal_conv1d_cpu_bwd(real, x, w, b, True)
    meta = [t.to("meta") for t in (real, x, w, b)]
    fake_g = torch.ops.dimbench.causal_conv1d_cpu_bwd(*meta, True)
    assert [t.stride() for t in real_g] == [t.stride() for t in fake_g]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weight_gradient_is_deterministic_across_thread_counts(layout):
    x, w, b = make(3, 64, 1500, 3, seed=6)
    x = in_layout(x, layout)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(conv_cpu.conv_backward(grad_out, x, w, b, True))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, e in zip(results[0], other, strict=True):
            assert torch.equal(a, e)


def test_flops_equal_the_torch_backends_count():
    x, w, b = make(2, 32, 50, 3)
    counts = {}
    for backend in ("cpu", "torch"):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        with FlopCounterMode(display=False) as fwd:
            out = causal_conv1d(xi, wi, bi, "silu", backend=backend)
        with FlopCounterMode(display=False) as bwd:
            out.sum().backward()
        counts[backend] = (fwd.get_total_flops(), bwd.get_total_flops())
    assert counts["cpu"] == (2 * 2 * 32 * 50 * 3, 4 * 2 * 32 * 50 * 3)
    from dimbench.measure.flops import FLOP_FORMULAS  # torch's count of a depthwise conv's bwd

    xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    with counter:
        causal_conv1d(xi, wi, bi, "silu", backend="torch").sum().backward()
    assert counter.get_total_flops() == sum(counts["cpu"])


def test_meta_tensors_and_fake_shapes():
    x = torch.empty(2, 8, 30, device="meta")
    w = torch.empty(8, 3, device="meta")
    out = torch.ops.dimbench.causal_conv1d_cpu(x, w, None, True)
    assert out.shape == x.shape and out.device.type == "meta"


def test_auto_picks_the_kernel_for_fp32_and_bf16_and_torch_otherwise():
    w = torch.randn(4, 3)
    assert resolve_for(torch.randn(1, 4, 9), w) == "cpu"
    assert resolve_for(torch.randn(1, 4, 9).bfloat16(), w) == "cpu"
    assert resolve_for(torch.randn(1, 4, 9).double(), w) == "torch"
    assert resolve_for(torch.empty(1, 4, 9, device="meta"), w) == "torch"
    x64 = torch.randn(1, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(
        causal_conv1d(x64, w.double(), None, "silu"),
        causal_conv1d_ref(x64, w.double(), None, "silu"),
    )
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        causal_conv1d(x64, w.double(), backend="cpu")


def test_bf16_autocast_gives_what_the_torch_backend_gives():
    x, w, b = make(1, 32, 500, 3, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x.to(torch.bfloat16)
        fast = causal_conv1d(xb, w, b, "silu", backend="cpu")
        ref = causal_conv1d(xb, w, b, "silu", backend="torch")
    assert fast.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), ref.float(), rtol=2**-6, atol=2**-6)
