"""``mamba_ssm.modules.mamba_simple.Mamba``: the Mamba-1 block with mamba_ssm's constructor
arguments, parameter names, shapes and initialisation (the same random draws in the same
order), so state dicts load both ways, on dimbench's kernels.

``forward(hidden_states, inference_params=None)``: with ``use_fast_path`` (the default) the block
is one ``dimbench.ops.mamba_inner`` node from in_proj's input to out_proj's output on CPU tensors
(channel-last end to end, recomputing in backward), ``mamba_inner_fn`` elsewhere; without it,
or while decoding with ``inference_params``, the unfused sequence over this layer's
``causal_conv1d_fn`` and ``selective_scan_fn``, and ``step`` for one token at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dimbench.compat import settings
from dimbench.compat.causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from dimbench.compat.selective_scan import mamba_inner_fn, selective_scan_fn
from dimbench.ops import mamba_inner as inner_ops

Tensor = torch.Tensor


class Mamba(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        inner, rank = self.d_inner, self.dt_rank

        # created in mamba_ssm's order: the default initialisers draw from the RNG in turn
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias, **factory
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(rank, inner, bias=True, **factory)

        # dt_proj's weight keeps the variance of its input; its bias is softplus^-1 of a step
        # drawn log-uniformly from [dt_min, dt_max]
        std = rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise NotImplementedError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        log_span = math.log(dt_max) - math.log(dt_min)
        dt = torch.exp(torch.rand(inner, **factory) * log_span + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

        # S4D-real A = -(1..N) per channel, kept as its log in fp32; D skip, fp32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(inner, d_model, bias=bias, **factory)

    def forward(self, hidden_states: Tensor, inference_params=None) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        batch = hidden_states.shape[0]
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, batch)
            if inference_params.seqlen_offset > 0:  # decoding: the states advance in place
                out, _, _ = self.step(hidden_states, conv_state, ssm_state)
                return out
        A = -torch.exp(self.A_log.float())
        if self.use_fast_path and inference_params is None:
            return self._fused(hidden_states, A)
        return self._unfused(hidden_states, A, conv_state, ssm_state)

    def _fused(self, hidden: Tensor, A: Tensor) -> Tensor:
        if hidden.device.type == "cpu" and self.in_proj.bias is None:
            chosen = settings.current()
            out = inner_ops.mamba_inner(
                None,
                None,
                self.conv1d.weight[:, 0],
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                A,
                self.D.float(),
                self.dt_proj.bias.float(),
                delta_softplus=True,
                scan_backend=chosen.scan,
                conv_backend=chosen.conv,
                hidden=hidden,
                in_proj_weight=self.in_proj.weight,
                keep="xz",
            )
            return out if self.out_proj.bias is None else out + self.out_proj.bias.to(out.dtype)
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2E, L), a view
        return mamba_inner_fn(
            xz,
            self.conv1d.weight,
            self.conv1d.bias,
            self.x_proj.weight,
            self.dt_proj.weight,
            self.out_proj.weight,
            self.out_proj.bias,
            A,
            None,  # B and C from x_proj
            None,
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )

    def _unfused(self, hidden: Tensor, A: Tensor, conv_state, ssm_state) -> Tensor:
        seqlen = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        if conv_state is not None:  # the last d_conv inputs (zeros before the start)
            conv_state.copy_(F.pad(x, (self.d_conv - seqlen, 0)))
        x = causal_conv1d_fn(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, E, L); bias in the scan
        y = selective_scan_fn(
            x,
            dt,
            A,
            B.transpose(1, 2).contiguous(),
            C.transpose(1, 2).contiguous(),
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=ssm_state is not None,
        )
        if ssm_state is not None:
            y, last_state = y
            ssm_state.copy_(last_state)
        return self.out_proj(y.transpose(1, 2))

    def step(
        self, hidden_states: Tensor, conv_state: Tensor, ssm_state: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One token (B, 1, d_model) -> (B, 1, d_model); conv_state (B, E, d_conv) and
        ssm_state (B, E, N) advance in place."""
        if hidden_states.shape[1] != 1:
            raise ValueError(f"step decodes one token at a time, got {hidden_states.shape[1]}")
        dtype = hidden_states.dtype
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)  # (B, E)
        x = causal_conv1d_update(
            x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, self.activation
        ).to(dtype)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight) + self.dt_proj.bias.to(dt.dtype))
        A = -torch.exp(self.A_log.float())
        decay = torch.exp(dt[..., None] * A)  # (B, E, N)
        ssm_state.copy_(ssm_state * decay + (dt * x)[..., None] * B[:, None, :])
        y = (ssm_state.to(dtype) * C[:, None, :]).sum(-1) + self.D.to(dtype) * x
        y = y * self.act(z)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype=None, **kwargs):
        """Zeroed (conv_state, ssm_state) for decoding ``batch_size`` sequences."""
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = self.dt_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(
            batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype
        )
        ssm_state = torch.zeros(
            batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype
        )
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size: int, initialize_states=False):
        if self.layer_idx is None:
            raise ValueError("decoding with inference_params needs the block's layer_idx")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            conv_state = torch.zeros(
                batch_size,
                self.d_inner,
                self.d_conv,
                device=self.conv1d.weight.device,
                dtype=self.conv1d.weight.dtype,
            )
            ssm_state = torch.zeros(
                batch_size,
                self.d_inner,
                self.d_state,
                device=self.dt_proj.weight.device,
                dtype=self.dt_proj.weight.dtype,
            )
            cache[self.layer_idx] = (conv_state, ssm_state)
        conv_state, ssm_state = cache[self.layer_idx]
        if initialize_states:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state
