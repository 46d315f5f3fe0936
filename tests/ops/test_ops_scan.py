"""Every selective-scan backend against a float64 reference: outputs and all gradients."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dimbench.ops import scan_backends, scan_cpu, scan_flops, selective_scan, selective_scan_ref
from dimbench.ops.layout import CHANNEL_LAST, CHANNEL_MAJOR
from dimbench.ops.scan_ref import selective_scan_ref_bwd

CPU_BACKENDS = scan_backends("cpu")
HAS_CPU_KERNEL = "cpu" in CPU_BACKENDS
needs_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no compiled cpu kernel here")
OPTIONAL = ("D", "z", "delta_bias")


def make_inputs(batch, dim, length, n, groups=None, delta_range=(1e-4, 10.0), seed=0):
    """Fresh random inputs; delta log-uniform over delta_range, A = -exp(.) as Mamba's."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (math.log(v) for v in delta_range)
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.exp(lo + (hi - lo) * torch.rand(batch, dim, length, generator=g)),
        "A": -torch.exp(torch.randn(dim, n, generator=g)),
        "B": torch.randn(*bc, generator=g),
        "C": torch.randn(*bc, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": 0.5 * torch.randn(dim, generator=g),
    }


def pick(inputs, with_opts):
    return {k: v for k, v in inputs.items() if k not in OPTIONAL or with_opts}


LAYOUTS = (CHANNEL_MAJOR, CHANNEL_LAST)
ACTIVATIONS = ("u", "delta", "z")


def channel_last(t):
    """The same values as a (B, L, D) tensor seen transposed: channel stride 1."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def in_layout(inputs, layout):
    """u, delta and z in ``layout`` (channel-last as a projection's (B, L, D) output)."""
    if layout == CHANNEL_MAJOR:
        return inputs
    return {k: channel_last(v) if k in ACTIVATIONS else v for k, v in inputs.items()}


def assert_layout(out, backend, layout):
    """The cpu kernel returns y in u's layout; the other backends contiguous (B, D, L)."""
    batch, dim, length = out.shape
    if backend == "cpu" and layout == CHANNEL_LAST and min(dim, length) > 1:
        assert out.stride() == (length * dim, 1, dim)
    elif min(dim, length) > 1:
        assert out.is_contiguous()


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
AUTOGRAD_MAX_LENGTH = 400  # beyond, autograd's graph of a float64 loop is slow; use the twin


def reference(inputs, softplus, grad_out=None, seed=0):
    """float64 output and input gradients: autograd of the reference loop for short sequences,
    its hand-written backward twin (checked against autograd below) for long ones."""
    x64 = {k: v.double() for k, v in inputs.items()}
    length = inputs["u"].shape[-1]
    if length <= AUTOGRAD_MAX_LENGTH:
        leaves = {k: v.requires_grad_() for k, v in x64.items()}
        out = selective_scan_ref(**leaves, delta_softplus=softplus)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        out.backward(grad_out.double())
        return out.detach(), grad_out, {k: v.grad for k, v in leaves.items()}
    out = selective_scan_ref(**x64, delta_softplus=softplus)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    args = [x64.get(k) for k in NAMES]
    grads = selective_scan_ref_bwd(grad_out.double(), *args, delta_softplus=softplus)
    return out, grad_out, {k: g for k, g in zip(NAMES, grads, strict=True) if k in x64}


def assert_close(actual, expected, rel=2e-5, what=""):
    """max |a - e| within rel of max |e| (float32 against float64 over long recurrences)."""
    scale = expected.abs().max().item()
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * scale + 1e-7, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


CASES = [
    # (batch, dim, length, d_state, groups)
    (1, 16, 1, 16, None),
    (2, 37, 100, 16, None),  # dim not a multiple of 16, length not of the time tile
    (1, 32, 130, 5, 2),  # grouped B/C, odd d_state
    (1, 24, 333, 33, None),
    (2, 16, 1024, 16, None),
    (2, 64, 77, 16, 2),  # grouped, two 16-channel blocks per group (paired in the backward)
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_opts", [False, True], ids=["bare", "D-z-bias-softplus"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backend_matches_float64_reference(backend, case, with_opts, layout):
    batch, dim, length, n, groups = case
    if backend == "ref" and length > 200:
        pytest.skip("the reference checks itself at small sizes")
    inputs = pick(make_inputs(batch, dim, length, n, groups, seed=length), with_opts)
    softplus = with_opts
    expected, grad_out, expected_grads = reference(inputs, softplus)

    leaves = {k: v.clone().requires_grad_() for k, v in in_layout(inputs, layout).items()}
    out = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
    assert out.shape == (batch, dim, length) and out.dtype == torch.float32
    assert_layout(out, backend, layout)
    assert_close(out, expected, what="out")
    out.backward(grad_out.float())
    for name, leaf in leaves.items():
        assert leaf.grad is not None, name
        assert leaf.grad.shape == leaf.shape, name
        assert_close(leaf.grad, expected_grads[name], rel=5e-5, what=f"d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_long_sequence_with_extreme_deltas_is_finite_and_exact(backend, layout):
    """L = 9216 (DiM at 1536 px); delta from 1e-4 to 10 with softplus; no overflow, no NaN."""
    if backend == "ref":
        pytest.skip("the reference is the oracle here")
    inputs = make_inputs(1, 16, 9216, 4, seed=1)
    expected, grad_out, expected_grads = reference(inputs, True)
    leaves = {k: v.clone().requires_grad_() for k, v in in_layout(inputs, layout).items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    out.backward(grad_out.float())
    assert torch.isfinite(out).all()
    assert_close(out, expected, what="out")
    for name, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), name
        assert_close(leaf.grad, expected_grads[name], rel=1e-4, what=f"d{name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_decays_underflow_to_zero_not_nan(backend):
    inputs = make_inputs(1, 16, 64, 16, delta_range=(5.0, 10.0), seed=2)
    inputs["A"] = inputs["A"] * 1e4  # exp(delta * A) underflows
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    expected = selective_scan_ref(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert torch.isfinite(out).all()
    assert_close(out, expected, what="out")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("softplus", [False, True])
def test_large_deltas_match_reference(backend, softplus):
    """delta ~ U(0, 100): the decays underflow, the states go subnormal in the reference's
    float32 twin; the kernels flush them and still match float64."""
    inputs = make_inputs(2, 48, 150, 16, seed=7)
    inputs["delta"] = 100 * torch.rand(
        inputs["u"].shape, generator=torch.Generator().manual_seed(7)
    )
    expected, grad_out, expected_grads = reference(inputs, softplus)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
    assert_close(out, expected, what="out")
    out.backward(grad_out.float())
    for name, leaf in leaves.items():
        assert_close(leaf.grad, expected_grads[name], rel=5e-5, what=f"d{name}")


@needs_kernel
def test_kernels_flush_denormals_and_restore_the_callers_mode():
    if not scan_cpu.flushes_denormals():
        pytest.skip("no flush-to-zero control on this CPU")
    # a subnormal u reaches the output only through D * u: read as zero inside the kernel
    inputs = make_inputs(1, 16, 32, 4, seed=8)
    inputs["B"] = torch.zeros_like(inputs["B"])
    inputs["u"] = torch.full_like(inputs["u"], 1e-40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the kernel runs in this thread
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            before = scan_cpu.fp_control()
            leaves = {k: v.clone().requires_grad_() for k, v in pick(inputs, True).items()}
            out = selective_scan(**leaves, backend="cpu")
            out.sum().backward()
            assert scan_cpu.fp_control() == before, f"FP mode changed (flush_denormal={flush})"
            assert (out == 0).all()
        assert torch.tensor(1e-40) * 1 == 0  # the caller's own mode holds: flushing here
        torch.set_flush_denormal(False)
        assert torch.tensor(1e-40) * 1 != 0  # ... and not flushing here
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def bf16_inputs(case, seed):
    """Activations and B, C in bfloat16; A, D, delta_bias float32 parameters, as in Mamba."""
    batch, dim, length, n, groups = case
    params = ("A", "D", "delta_bias")
    inputs = make_inputs(batch, dim, length, n, groups, delta_range=(1e-3, 1.0), seed=seed)
    return {k: (v if k in params else v.bfloat16()) for k, v in inputs.items()}


BF16_CASES = [(2, 37, 100, 16, None), (1, 64, 257, 16, 2), (1, 32, 2048, 5, None)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_matches_float64_reference(backend, case, layout):
    """bf16 in and out, float32 state: against float64 on the same (bf16) values, with the
    tolerance of one bf16 rounding of each output; gradients in the inputs' dtypes."""
    if backend == "ref" and case[2] > 200:
        pytest.skip("the reference checks itself at small sizes")
    inputs = bf16_inputs(case, seed=case[2])
    grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))
    expected, grad_out, expected_grads = reference(inputs, True, grad_out.bfloat16().double())
    leaves = {k: v.clone().requires_grad_() for k, v in in_layout(inputs, layout).items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    assert out.dtype == torch.bfloat16
    assert_layout(out, backend, layout)
    assert_close(out.float(), expected, rel=1e-2, what="bf16 out")
    out.backward(grad_out.bfloat16())
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == leaf.dtype, name
        rel = 1e-2 if leaf.dtype == torch.bfloat16 else 2e-3
        assert_close(leaf.grad.float(), expected_grads[name], rel=rel, what=f"bf16 d{name}")


@needs_kernel
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_kernel_is_the_float32_kernel_rounded_once(case, layout):
    """The bf16 path computes exactly what the float32 path computes on the same values and
    rounds each output once, to nearest even (as torch's conversion does)."""
    inputs = in_layout(bf16_inputs(case, seed=case[2] + 1), layout)
    grad_out = torch.randn(inputs["u"].shape).bfloat16()
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        leaves = {
            k: (v.to(dtype) if v.dtype == torch.bfloat16 else v).clone().requires_grad_()
            for k, v in inputs.items()
        }
        out = selective_scan(**leaves, delta_softplus=True, backend="cpu")
        out.backward(grad_out.to(dtype))
        results[dtype] = (out, {k: v.grad for k, v in leaves.items()})
    out16, grads16 = results[torch.bfloat16]
    out32, grads32 = results[torch.float32]
    assert torch.equal(out16, out32.bfloat16())
    for name, g in grads16.items():
        assert torch.equal(g, grads32[name].to(g.dtype)), name


@needs_kernel
def test_mixed_dtypes_compute_in_float32_and_return_each_inputs_dtype():
    inputs = bf16_inputs((1, 32, 50, 16, None), seed=9)
    inputs["delta"] = inputs["delta"].float()  # not all bf16: the kernel runs in float32
    inputs["C"] = inputs["C"].half()
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend="cpu")
    assert out.dtype == torch.bfloat16  # u's dtype
    expected = selective_scan_ref(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert_close(out.float(), expected, rel=1e-2, what="mixed out")
    out.float().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == leaf.dtype and torch.isfinite(leaf.grad.float()).all(), name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float16_inputs(backend):
    inputs = {k: v.half() for k, v in make_inputs(1, 20, 40, 8, seed=10).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    assert out.dtype == torch.float16
    expected = selective_scan_ref(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert_close(out.float(), expected, rel=2e-3, what="fp16 out")
    out.float().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad.dtype == torch.float16 and torch.isfinite(leaf.grad.float()).all(), name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_views_give_the_contiguous_results(backend):
    """What a mixer passes: u and z as channel slices of one (B, 2E, L) projection, B and C as
    time-major slices of x_proj's (B, L, R + 2N) output (read in place by the cpu kernel)."""
    batch, dim, length, n, rank = 2, 48, 90, 16, 6
    g = torch.Generator().manual_seed(11)
    xz = torch.randn(batch, 2 * dim, length, generator=g)
    x_dbl = torch.randn(batch, length, rank + 2 * n, generator=g)
    base = make_inputs(batch, dim, length, n, seed=11)
    views = dict(base, u=xz[:, :dim], z=xz[:, dim:])
    views["B"] = x_dbl[..., rank : rank + n].transpose(1, 2)
    views["C"] = x_dbl[..., rank + n :].transpose(1, 2)
    dense = {k: v.contiguous() for k, v in views.items()}
    outs, grads = [], []
    for inputs in (views, dense):
        leaves = {
            k: v.detach().clone() if v.is_contiguous() else v.detach() for k, v in inputs.items()
        }
        leaves = {k: v.requires_grad_() for k, v in leaves.items()}
        out = selective_scan(**leaves, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
        outs.append(out)
        grads.append({k: v.grad for k, v in leaves.items()})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for k in grads[1]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channel_last_views_of_one_projection_give_the_channel_major_results(backend):
    """What the channel-last mixer passes: u and z as halves of one (B, L, 2E) projection seen
    (B, E, L), delta a (B, L, E) output seen transposed; mixed layouts (u channel-last, delta
    channel-major) and grad_out in either layout give the same numbers too."""
    batch, dim, length, n = 2, 48, 90, 16
    g = torch.Generator().manual_seed(12)
    xz = torch.randn(batch, length, 2 * dim, generator=g)
    base = make_inputs(batch, dim, length, n, seed=12)
    views = dict(base, u=xz[..., :dim].transpose(1, 2), z=xz[..., dim:].transpose(1, 2))
    views["delta"] = channel_last(base["delta"])
    mixed = dict(views, delta=base["delta"])
    dense = {k: v.contiguous() for k, v in views.items()}
    grad = torch.randn(batch, dim, length, generator=g)
    results = []
    for inputs, grad_out in ((views, channel_last(grad)), (mixed, grad), (dense, grad)):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        out = selective_scan(**leaves, delta_softplus=True, backend=backend)
        out.backward(grad_out)
        results.append((out, {k: v.grad for k, v in leaves.items()}))
    assert_layout(results[0][0], backend, CHANNEL_LAST)
    for out, grads in results[:2]:
        torch.testing.assert_close(out, results[2][0], rtol=0, atol=0)
        for k, g_ in grads.items():  # sums over time: the ref backend's order follows strides
            assert_close(g_, results[2][1][k].double(), rel=1e-6, what=f"d{k}")


@needs_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_implementations_give_the_kernels_strides(layout):
    """torch.compile plans with the fake implementations: their outputs' strides must be the
    cpu kernel's (u's layout for y, du, ddelta, dz)."""
    inputs = in_layout(make_inputs(2, 32, 40, 16, seed=13), layout)
    args = [inputs[k] for k in NAMES]
    real = torch.ops.dimbench.selective_scan(*args[:5], *args[5:], True, "cpu", True)
    meta = [t.to("meta") for t in args]
    fake = torch.ops.dimbench.selective_scan(*meta[:5], *meta[5:], True, "cpu", True)
    assert [t.stride() for t in real] == [t.stride() for t in fake]
    grad = real[0].detach().clone()
    real_g = torch.ops.dimbench.selective_scan_bwd(grad, *args, True, "cpu", real[1:])
    fake_g = torch.ops.dimbench.selective_scan_bwd(
        grad.to("meta"), *meta, True, "cpu", [t.to("meta") for t in real[1:]]
    )
    assert [t.stride() for t in real_g] == [t.stride() for t in fake_g]
    assert real_g[0].stride() == real[0].stride()


def test_ref_backward_matches_autograd_of_the_reference():
    inputs = make_inputs(2, 8, 40, 6, groups=2, seed=4)
    leaves = {k: v.double().requires_grad_() for k, v in inputs.items()}
    out = selective_scan_ref(**leaves, delta_softplus=True)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    grads = selective_scan_ref_bwd(
        grad_out, *(inputs[k].double() for k in NAMES), delta_softplus=True
    )
    for name, g in zip(NAMES, grads, strict=True):
        torch.testing.assert_close(g, leaves[name].grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_custom_op():
    inputs = make_inputs(1, 3, 6, 2, seed=5)
    args = [inputs[k].double().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z")]

    def fn(*a):
        return selective_scan(*a, delta_softplus=True, backend="ref")

    assert torch.autograd.gradcheck(fn, args)


def test_results_do_not_depend_on_thread_count():
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("no compiled kernel here")
    inputs = make_inputs(2, 64, 300, 16, seed=6)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
            out = selective_scan(**leaves, delta_softplus=True, backend="cpu")
            out.sum().backward()
            results.append((out, {k: v.grad for k, v in leaves.items()}))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for k in inputs:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- FLOPs and meta


@pytest.mark.parametrize("with_opts", [False, True])
def test_flop_formula_counted_on_cpu_and_meta(with_opts):
    inputs = pick(make_inputs(2, 32, 50, 16), with_opts)
    expected_fwd = scan_flops(
        (2, 32, 50), (32, 16), with_opts, with_opts, with_opts, delta_softplus=with_opts
    )
    assert expected_fwd == 9 * 2 * 50 * 32 * 16 + (10 * 2 * 32 * 50 if with_opts else 0)
    for device in ("cpu", "meta"):
        leaves = {k: v.detach().clone().to(device).requires_grad_() for k, v in inputs.items()}
        with FlopCounterMode(display=False) as counter:
            out = selective_scan(**leaves, delta_softplus=with_opts)
        assert out.shape == (2, 32, 50) and out.device.type == device
        assert counter.get_total_flops() == expected_fwd
        with FlopCounterMode(display=False) as counter:
            out.backward(torch.ones_like(out))
        assert counter.get_total_flops() == 2 * expected_fwd
        if device == "meta":
            assert all(leaf.grad.shape == leaf.shape for leaf in leaves.values())


def test_meta_tensors_allocate_nothing_at_paper_scale():
    """DiM-H/2 at 1536 px: E = 3072 channels, L = 9806 tokens; shapes only."""
    u = torch.empty(8, 3072, 9806, device="meta")
    A = torch.empty(3072, 16, device="meta")
    B = torch.empty(8, 16, 9806, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = selective_scan(u, u, A, B, B, A[:, 0], u, A[:, 0], delta_softplus=True)
    assert out.shape == u.shape and out.is_meta
    assert counter.get_total_flops() == scan_flops(u.shape, A.shape, True, True, True, True)


# --------------------------------------------------------------------------- errors


def test_unknown_backend_names_the_available_ones():
    inputs = make_inputs(1, 4, 5, 2)
    with pytest.raises(ValueError, match="unknown scan backend 'nope'.*ref"):
        selective_scan(**inputs, backend="nope")


def test_unavailable_backend_is_a_clear_error():
    if "mamba_ssm" in scan_backends():
        pytest.skip("mamba_ssm is installed here")
    inputs = make_inputs(1, 4, 5, 2)
    with pytest.raises((RuntimeError, ValueError), match="available here"):
        selective_scan(**inputs, backend="mamba_ssm")


def test_shape_errors_say_what_was_expected():
    inputs = make_inputs(1, 4, 5, 2)
    inputs["B"] = inputs["B"][..., :3]
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**inputs)
