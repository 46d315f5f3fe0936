"""The fused mixer node (mamba_inner) against its autograd twin: outputs, every gradient, memory."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dimbench.models.mamba_mixer import MambaMixer
from dimbench.ops import conv_backends, scan_backends
from dimbench.ops.mamba_inner import mamba_inner, mamba_inner_ref
from dimbench.registry import create_model

SCAN_BACKENDS = scan_backends("cpu")
CONV_BACKENDS = conv_backends("cpu")


def make_mixer(d_model=24, d_state=8, d_conv=3, seed=0, **kw):
    torch.manual_seed(seed)
    m = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, **kw)
    with torch.no_grad():  # a trained-looking D and dt bias rather than the init's constants
        m.D.normal_()
        m.dt_proj.bias.add_(0.3 * torch.randn_like(m.dt_proj.bias))
    return m


def run(mixer, x, grad_out, fused):
    mixer.fused = fused
    mixer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    out = mixer(xi)
    out.backward(grad_out)
    grads = {n: p.grad.clone() for n, p in mixer.named_parameters()}
    return out.detach(), xi.grad, grads


def assert_close(actual, expected, rel, what):
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rel * scale + 1e-7, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def compare(mixer, x, rel, seed=1):
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(*x.shape[:2], mixer.d_model, generator=g)
    fused = run(mixer, x, grad_out, True)
    ref = run(mixer, x, grad_out, False)
    assert_close(fused[0], ref[0], rel, "output")
    assert_close(fused[1], ref[1], rel, "d hidden")
    assert fused[2].keys() == ref[2].keys()
    for name in ref[2]:
        assert_close(fused[2][name], ref[2][name], rel, name)


@pytest.mark.parametrize("scan_backend", SCAN_BACKENDS)
@pytest.mark.parametrize("conv_backend", CONV_BACKENDS)
@pytest.mark.parametrize(
    "batch,length,d_conv", [(1, 1, 3), (2, 37, 3), (3, 130, 2), (1, 67, 4)], ids=str
)
def test_fused_matches_the_twin_fp32(scan_backend, conv_backend, batch, length, d_conv):
    m = make_mixer(d_conv=d_conv, scan_backend=scan_backend, conv_backend=conv_backend)
    x = torch.randn(batch, length, m.d_model, generator=torch.Generator().manual_seed(length))
    compare(m, x, 2e-5)


@pytest.mark.parametrize(
    "options",
    [{}, {"recompute_in_proj": True}, {"save_scan": True}],
    ids=["default", "in_proj-too", "save-scan"],
)
def test_fused_matches_the_twin_at_dim_widths(options):
    """E = 2 * 64, N = 16, R = 4, a few hundred tokens (a DiM-T/2 block at 256 px)."""
    m = make_mixer(d_model=64, d_state=16, **options)
    x = torch.randn(2, 300, 64, generator=torch.Generator().manual_seed(3))
    compare(m, x, 2e-5)


@pytest.mark.parametrize("save_scan", [False, True], ids=["recompute", "save-scan"])
@pytest.mark.parametrize("with_out_proj", [True, False], ids=["out_proj", "y"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["conv-bias", "no-conv-bias"])
def test_the_options_of_the_node(save_scan, with_out_proj, with_bias):
    g = torch.Generator().manual_seed(4)
    batch, dim, length, rank, n, d_model = 2, 32, 45, 3, 6, 20
    tensors = {
        "x": torch.randn(batch, dim, length, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "conv_weight": torch.randn(dim, 3, generator=g) / 2,
        "conv_bias": torch.randn(dim, generator=g) if with_bias else None,
        "x_proj_weight": torch.randn(rank + 2 * n, dim, generator=g) / dim**0.5,
        "dt_proj_weight": torch.randn(dim, rank, generator=g) / rank**0.5,
        "out_proj_weight": torch.randn(d_model, dim, generator=g) / dim**0.5
        if with_out_proj
        else None,
        "A": -torch.exp(torch.randn(dim, n, generator=g)),
        "D": torch.randn(dim, generator=g),
        "delta_bias": torch.randn(dim, generator=g) - 2,
    }
    results = []
    for fn, kw in ((mamba_inner, {"save_scan": save_scan}), (mamba_inner_ref, {})):
        leaves = {k: v.clone().requires_grad_() for k, v in tensors.items() if v is not None}
        args = {k: leaves.get(k) for k in tensors}
        out = fn(**args, **kw)
        out.backward(torch.sin(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape))
        results.append((out.detach(), {k: v.grad for k, v in leaves.items()}))
    (out, grads), (ref, ref_grads) = results
    assert out.shape == ((batch, length, d_model) if with_out_proj else (batch, dim, length))
    assert_close(out, ref, 2e-5, "out")
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 2e-5, k)


@pytest.mark.parametrize("recompute_in_proj", [False, True], ids=["x-z-saved", "in_proj-too"])
def test_bf16_autocast_matches_the_twin_loosely(recompute_in_proj):
    m = make_mixer(d_model=32, d_state=8, recompute_in_proj=recompute_in_proj)
    x = torch.randn(2, 90, 32, generator=torch.Generator().manual_seed(5))
    grad_out = torch.randn(2, 90, 32, generator=torch.Generator().manual_seed(6))
    results = {}
    for fused in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results[fused] = run(m, x, grad_out, fused)
    fused, ref = results[True], results[False]
    assert fused[0].dtype == ref[0].dtype == torch.bfloat16
    exact = run(m, x, grad_out, False)  # fp32: both bf16 runs should be near it
    for got, what in ((fused, "fused"), (ref, "twin")):
        assert_close(got[0], exact[0], 0.05, f"{what} output")
        assert_close(got[1], exact[1], 0.05, f"{what} d hidden")
        for name, g in exact[2].items():
            assert got[2][name].dtype == torch.float32
            assert_close(got[2][name], g, 0.1, f"{what} {name}")
    assert_close(fused[0].float(), ref[0].float(), 0.03, "fused vs twin output")


def saved_bytes(fn, module) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn`` runs, less ``module``'s
    parameters and views of them."""
    seen = {p.untyped_storage().data_ptr() for p in module.parameters()}
    total = [0]

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_the_fused_node_keeps_little_more_than_its_inputs():
    m = make_mixer(d_model=64, d_state=16)
    x = torch.randn(1, 512, 64, requires_grad=True)
    saved = {}
    for fused in (True, False):
        m.fused = fused
        saved[fused] = saved_bytes(lambda: m(x), m)
    E, L = m.d_inner, 512
    bel = E * L * 4  # one (B, E, L) fp32 tensor
    x_dbl = L * (m.dt_rank + 2 * m.d_state) * 4
    hidden = L * 64 * 4  # in_proj's input, saved by in_proj's matmul
    small = 2 * m.d_inner * m.d_state * 4  # exp(A_log) for its backward, A = -exp(A_log)
    # x and z (the node's inputs), x_proj's output, in_proj's input, A
    assert saved[True] <= 2 * bel + x_dbl + hidden + small
    assert saved[False] >= 5 * bel  # the twin: padded x, pre-activation, u, dt, z, y, states
    assert saved[True] < 0.5 * saved[False]
    m.fused = m.recompute_in_proj = True
    # with in_proj inside: the mixer's input and x_proj's output
    assert saved_bytes(lambda: m(x), m) <= x_dbl + hidden + small
    m.recompute_in_proj, m.save_scan = False, True
    # save_scan: also the scan's output y and the states its backward reads (a quarter of y)
    assert saved_bytes(lambda: m(x), m) >= saved[True] + bel


def test_forward_flops_are_the_twins():
    m = make_mixer()
    x = torch.randn(2, 40, m.d_model)
    counts = {}
    for fused in (True, False):
        m.fused = fused
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
        counts[fused] = counter.get_total_flops()
    assert counts[True] == counts[False] > 0


def test_auto_uses_the_node_on_cpu_and_the_twin_on_meta():
    m = make_mixer()
    assert m.uses_fused(torch.empty(1, 4, 24))
    assert not m.uses_fused(torch.empty(1, 4, 24, device="meta"))
    m.fused = False
    assert not m.uses_fused(torch.empty(1, 4, 24))
    with torch.device("meta"):
        meta = MambaMixer(24, d_state=8)
    assert meta(torch.empty(2, 9, 24, device="meta")).shape == (2, 9, 24)


@pytest.mark.parametrize("recompute_in_proj", [False, True], ids=["x-z-saved", "in_proj-too"])
def test_fused_mixers_inside_a_small_dim_give_todays_model(recompute_in_proj):
    """DiM-T/2 with every mixer fused against the same weights with every mixer the twin:
    outputs within fp32 rounding, and the parameter gradients of a loss."""
    torch.manual_seed(0)
    model = create_model("DiM-T/2", image_size=64)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10.0, 500.0])
    y = torch.tensor([3, 1000])  # a class and the null label
    results = {}
    for fused in (True, False):
        for block in model.blocks:
            block.mixer.fused = fused
            block.mixer.recompute_in_proj = recompute_in_proj
        model.zero_grad(set_to_none=True)
        out = model(x, t, y)
        out.square().mean().backward()
        results[fused] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (out, grads), (ref, ref_grads) = results[True], results[False]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():
        assert_close(grads[name], g, 1e-4, name)


def test_bad_shapes_are_a_clear_error():
    x = torch.randn(1, 8, 10)
    with pytest.raises(ValueError, match="give x and z"):
        mamba_inner(x, None, *[torch.empty(0)] * 8)
    with pytest.raises(ValueError, match="does not fit hidden"):
        mamba_inner(
            None,
            None,
            *[torch.empty(0)] * 8,
            hidden=torch.randn(1, 10, 4),
            in_proj_weight=torch.randn(16, 5),
        )
    with pytest.raises(ValueError, match="do not fit"):
        mamba_inner(
            x,
            x,
            torch.randn(8, 3),
            None,
            torch.randn(5, 8),  # R + 2N = 2 + 2 * 4 = 10 expected
            torch.randn(8, 2),
            None,
            -torch.ones(8, 4),
            None,
            None,
        )


def block_branch(mixer, stream, norm_weight, shift, scale, gate, fused):
    """A DiM block's branch: the fused node from the stream, or the unfused sequence."""
    if fused:
        mixer.fused = True
        return mixer.block(stream, norm_weight, shift, scale, gate, 1e-5)
    h = torch.nn.functional.rms_norm(stream, norm_weight.shape, eps=1e-5)
    h = torch.addcmul(shift[:, None], h, (norm_weight * (1 + scale))[:, None])
    mixer.fused = False
    return (1 + gate[:, None]) * mixer(h)


@pytest.mark.parametrize("recompute_in_proj", [False, True], ids=["x-z-kept", "in_proj-too"])
def test_the_block_node_is_the_unfused_block(recompute_in_proj):
    """Norm, modulation, mixer and gate from the residual stream: outputs and the gradients of
    the stream, the norm weight, shift, scale, gate and every mixer parameter."""
    m = make_mixer(d_model=24, recompute_in_proj=recompute_in_proj)
    g = torch.Generator().manual_seed(5)
    batch, length = 2, 41
    stream = torch.randn(batch, length, 24, generator=g)
    params = {
        "norm_weight": 1 + 0.1 * torch.randn(24, generator=g),
        "shift": 0.3 * torch.randn(batch, 24, generator=g),
        "scale": 0.3 * torch.randn(batch, 24, generator=g),
        "gate": 0.3 * torch.randn(batch, 24, generator=g),
    }
    grad_out = torch.randn(batch, length, 24, generator=g)
    results = {}
    for fused in (True, False):
        m.zero_grad(set_to_none=True)
        leaves = {k: v.clone().requires_grad_() for k, v in {"stream": stream, **params}.items()}
        out = block_branch(m, *leaves.values(), fused)
        out.backward(grad_out)
        grads = {k: v.grad for k, v in leaves.items()}
        grads.update({n: p.grad.clone() for n, p in m.named_parameters()})
        results[fused] = (out.detach(), grads)
    (out, grads), (ref, ref_grads) = results[True], results[False]
    assert_close(out, ref, 1e-5, "output")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], 1e-4, name)


def test_the_block_node_keeps_the_stream_and_little_else():
    m = make_mixer(d_model=64, d_state=16)
    length = 512
    stream = torch.randn(1, length, 64, requires_grad=True)
    mod = [torch.zeros(1, 64, requires_grad=True) for _ in range(3)]
    weight = torch.ones(64, requires_grad=True)

    def branch():
        return m.block(stream, weight, *mod, 1e-5)

    bel = m.d_inner * length * 4
    x_dbl = length * (m.dt_rank + 2 * m.d_state) * 4
    small = 2 * m.d_inner * m.d_state * 4 + 4 * 64 * 4
    stream_bytes = length * 64 * 4
    m.recompute_in_proj = True  # the stream and x_proj's output: no (B, E, L) tensor at all
    assert saved_bytes(branch, m) <= stream_bytes + x_dbl + small
    m.recompute_in_proj = False  # and x and z
    assert saved_bytes(branch, m) <= stream_bytes + 2 * bel + x_dbl + small
