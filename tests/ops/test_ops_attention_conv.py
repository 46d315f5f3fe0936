"""Attention backends agree and count the same FLOPs; causal conv matches its definition."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dimbench.ops import attention, attention_backends, causal_conv1d, conv_backends
from dimbench.ops.attention import attention_flops


def qkv(b=2, h=3, lq=37, lk=37, d=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(device) for n in (lq, lk, lk)]


def test_math_and_sdpa_agree_forward_and_backward():
    grads = {}
    outs = {}
    for backend in ("math", "sdpa"):
        q, k, v = (t.requires_grad_() for t in qkv())
        out = attention(q, k, v, backend=backend)
        out.backward(torch.ones_like(out))
        outs[backend] = out.detach()
        grads[backend] = [t.grad for t in (q, k, v)]
    torch.testing.assert_close(outs["math"], outs["sdpa"], rtol=1e-5, atol=1e-5)
    for gm, gs in zip(grads["math"], grads["sdpa"], strict=True):
        torch.testing.assert_close(gm, gs, rtol=1e-4, atol=1e-5)


def test_math_backend_is_softmax_qk_v():
    q, k, v = qkv(lq=5, lk=9)
    expected = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v, backend="math"), expected)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_flops_equal_the_formula_on_every_backend(backend, device):
    """CPU SDPA counts 0 in stock torch; dimbench registers the formula."""
    q, k, v = (t.requires_grad_() for t in qkv(lq=33, lk=65, device=device))
    expected = attention_flops(q.shape, k.shape, v.shape)
    assert expected == 4 * 2 * 3 * 33 * 65 * 16
    with FlopCounterMode(display=False) as counter:
        out = attention(q, k, v, backend=backend)
    assert counter.get_total_flops() == expected
    with FlopCounterMode(display=False) as counter:
        out.backward(torch.ones_like(out))
    assert counter.get_total_flops() == 2 * expected


def test_backend_errors_are_clear():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown attention backend 'nope'.*sdpa"):
        attention(q, k, v, backend="nope")
    if "flash_attn" not in attention_backends():
        with pytest.raises(RuntimeError, match="flash_attn"):
            attention(q, k, v, backend="flash_attn")


def conv_by_definition(x, w, b):
    out = torch.zeros_like(x)
    width = w.shape[1]
    for t in range(x.shape[-1]):
        for j in range(width):
            src = t - width + 1 + j
            if src >= 0:
                out[..., t] += w[:, j] * x[..., src]
    return out + b[:, None]


CONV_BACKENDS = ["auto", *conv_backends("cpu")]


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv_matches_definition(activation, backend):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 11, generator=g), torch.randn(6, 3, generator=g), torch.randn(6)
    expected = conv_by_definition(x, w, b)
    if activation == "silu":
        expected = F.silu(expected)
    out = causal_conv1d(x, w, b, activation=activation, backend=backend)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_causal_conv_never_sees_the_future(backend):
    x = torch.randn(1, 4, 20, requires_grad=True)
    w = torch.randn(4, 3)
    out = causal_conv1d(x, w, backend=backend)
    out[..., 9].sum().backward()
    assert x.grad[..., 10:].abs().sum() == 0 and x.grad[..., 7:10].abs().sum() > 0


def test_conv_errors_are_clear():
    x, w = torch.randn(1, 4, 8), torch.randn(4, 3)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="unknown conv backend"):
        causal_conv1d(x, w, backend="nope")
    assert "torch" in conv_backends()
