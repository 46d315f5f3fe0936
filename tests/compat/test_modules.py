"""The layer's modules against plain PyTorch: causal_conv1d's functions against F.conv1d, the
norm against its formula, and the Mamba block against a reference block written here from
mamba_ssm's definition (the same parameters created in the same order, the unfused forward on
nn.Conv1d and the sequential reference scan), state dicts loading both ways."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dimbench import compat

compat.install()
from causal_conv1d import causal_conv1d_fn, causal_conv1d_update  # noqa: E402
from mamba_ssm.modules.mamba_simple import Mamba  # noqa: E402
from mamba_ssm.ops.selective_scan_interface import selective_scan_ref  # noqa: E402
from mamba_ssm.ops.triton.layer_norm import RMSNorm, rms_norm_fn  # noqa: E402


def conv_reference(x, weight, bias, activation):
    """mamba_ssm's own fallback: nn.Conv1d with padding K - 1, the first L outputs."""
    dim, width = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., : x.shape[-1]]
    return F.silu(out) if activation else out


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_causal_conv1d_fn(width: int, has_bias: bool, activation: str | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 50)
    weight, bias = torch.randn(32, width), torch.randn(32) if has_bias else None
    out = causal_conv1d_fn(x, weight, bias, activation=activation)
    torch.testing.assert_close(out, conv_reference(x, weight, bias, activation))


def test_causal_conv1d_fn_carries_its_left_context() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 16, 40), torch.randn(16, 4), torch.randn(16)
    whole = causal_conv1d_fn(x, weight, bias, activation="silu")
    first, state = causal_conv1d_fn(
        x[..., :25], weight, bias, return_final_states=True, activation="silu"
    )
    second = causal_conv1d_fn(x[..., 25:], weight, bias, initial_states=state, activation="silu")
    assert state.shape == (2, 16, 3)
    torch.testing.assert_close(torch.cat([first, second], -1), whole)


def test_causal_conv1d_update_steps_through_the_sequence() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 16, 12), torch.randn(16, 4), torch.randn(16)
    whole = conv_reference(x, weight, bias, "silu")
    state = torch.zeros(2, 16, 4)
    steps = [causal_conv1d_update(x[..., t], state, weight, bias, "silu") for t in range(12)]
    torch.testing.assert_close(torch.stack(steps, -1), whole)
    torch.testing.assert_close(state, x[..., -4:])


def test_causal_conv1d_refuses_what_it_lacks() -> None:
    x, weight = torch.randn(1, 4, 8), torch.randn(4, 3)
    with pytest.raises(NotImplementedError, match="seq_idx"):
        causal_conv1d_fn(x, weight, seq_idx=torch.zeros(1, 8, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="activation"):
        causal_conv1d_fn(x, weight, activation="gelu")


def test_rms_norm_fused_add() -> None:
    torch.manual_seed(0)
    x, residual = torch.randn(3, 7, 32, dtype=torch.bfloat16), torch.randn(3, 7, 32)
    norm = RMSNorm(32)
    nn.init.normal_(norm.weight)
    out, res_out = norm(x, residual, prenorm=True, residual_in_fp32=True)
    total = x.float() + residual
    want = total * torch.rsqrt(total.square().mean(-1, keepdim=True) + norm.eps) * norm.weight
    assert out.dtype == torch.bfloat16 and res_out.dtype == torch.float32
    torch.testing.assert_close(res_out, total)
    torch.testing.assert_close(out, want.to(torch.bfloat16))
    first, res_first = rms_norm_fn(x, norm.weight, None, prenorm=True, residual_in_fp32=True)
    torch.testing.assert_close(res_first, x.float())


class ReferenceMamba(nn.Module):
    """Mamba-1 as mamba_ssm defines it, in plain PyTorch (nn.Conv1d, the sequential scan)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_min=0.001, dt_max=0.1,
                 dt_init_floor=1e-4, bias=False):  # fmt: skip
        super().__init__()
        inner, rank = expand * d_model, math.ceil(d_model / 16)
        self.d_state, self.dt_rank = d_state, rank
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        nn.init.uniform_(self.dt_proj.weight, -(rank**-0.5), rank**-0.5)
        dt = torch.exp(
            torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def forward(self, hidden):
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        sizes = [self.dt_rank, self.d_state, self.d_state]
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(sizes, dim=-1)
        y = selective_scan_ref(
            x, (dt @ self.dt_proj.weight.t()).transpose(1, 2), -torch.exp(self.A_log),
            B.transpose(1, 2), C.transpose(1, 2), self.D, z=z,
            delta_bias=self.dt_proj.bias, delta_softplus=True,
        )  # fmt: skip
        return self.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("bias", [False, True])
def test_mamba_block_matches_the_reference(bias: bool) -> None:
    torch.manual_seed(1)
    block = Mamba(48, d_state=8, bias=bias)
    torch.manual_seed(1)
    ref = ReferenceMamba(48, d_state=8, bias=bias)
    # the same random draws in the same order: the initialisation is mamba's
    sd, ref_sd = block.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd)
    for key in sd:
        torch.testing.assert_close(sd[key], ref_sd[key], msg=key)

    with torch.no_grad():  # train the copy a little so that loading both ways means something
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    block.load_state_dict(ref.state_dict())
    ReferenceMamba(48, d_state=8, bias=bias).load_state_dict(block.state_dict())
    slow = Mamba(48, d_state=8, bias=bias, use_fast_path=False)
    slow.load_state_dict(block.state_dict())

    x = torch.randn(2, 37, 48, requires_grad=True)
    want = ref(x)
    g = torch.randn_like(want)
    (dx_want,) = torch.autograd.grad(want, x, g)
    for model in (block, slow):
        out = model(x)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
        (dx,) = torch.autograd.grad(out, x, g)
        torch.testing.assert_close(dx, dx_want, rtol=1e-4, atol=1e-5)


def test_mamba_block_decodes_token_by_token() -> None:
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, layer_idx=0).eval()
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        whole = block(x)
        params = SimpleNamespace(key_value_memory_dict={}, seqlen_offset=0)
        outs = [block(x[:, :12], inference_params=params)]  # prefill: fills both states
        for t in range(12, 20):
            params.seqlen_offset = t
            outs.append(block(x[:, t : t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-4, atol=1e-5)
