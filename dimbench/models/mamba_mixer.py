"""The Mamba-1 mixer (Gu & Dao), on dimbench's kernel layer.

in_proj D -> 2E (x and the gate z), causal depthwise conv1d + SiLU on x, x_proj -> (dt, B, C),
dt_proj, selective scan with D skip and SiLU(z) gate, out_proj E -> D. Parameter names, shapes and
initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``, so checkpoints map one to one.

in_proj and everything after it run as one autograd node (``dimbench.ops.mamba_inner``, the
design of mamba_ssm's ``mamba_inner_fn``), channel-last end to end (the (B, L, C) GEMM layouts),
that saves the mixer's input, x and z (or less) and the small x_proj output and recomputes the
rest in backward; its twin ``mamba_inner_ref`` (separate ops, plain autograd, channel-major
between the projections) runs where the node is not used: on the meta device (FLOP counts) and
on CUDA unless ``fused=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dimbench.ops.mamba_inner import mamba_inner, mamba_inner_ref

Tensor = torch.Tensor


class MambaMixer(nn.Module):
    """Unidirectional Mamba-1 mixer: (B, L, D) -> (B, L, D).

    ``scan_backend``, ``conv_backend`` and ``fused`` are read at every call, so they can be
    switched on a built model. ``fused``: None (auto: the fused node on CPU tensors, the twin
    elsewhere), True or False. ``recompute_in_proj`` (fused only): the node keeps the mixer's
    input but not x and z (a quarter of their size) for one more in_proj matmul in backward.
    ``recompute_z`` (a DiM block's node, see ``block``): keep x but not z, recomputed in
    backward by half of in_proj (a quarter less memory than keeping both for a sixth more matmul
    work in backward). ``save_scan`` (fused only): keep the scan's output
    and states for backward (one (B, E, L) tensor and a quarter) rather than run the scan forward
    again.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        n_layer: int = 1,
        scan_backend: str = "auto",
        conv_backend: str = "auto",
        fused: bool | None = None,
        recompute_in_proj: bool = False,
        recompute_z: bool = True,
        save_scan: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        self.conv_backend = conv_backend
        self.fused = fused
        self.recompute_in_proj = recompute_in_proj
        self.recompute_z = recompute_z
        self.save_scan = save_scan

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # S4D-real initialisation, kept in fp32 as A_log; A = -exp(A_log)
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
        )
        self.D = nn.Parameter(torch.ones(self.d_inner, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_parameters(dt_min, dt_max, dt_init_floor, n_layer)

    @torch.no_grad()
    def reset_parameters(
        self,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        n_layer: int = 1,
    ) -> None:
        """Mamba's initialisation (``Mamba.__init__`` plus ``_init_weights`` with ``n_layer``)."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # dt bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]
        log_dt = torch.rand(self.d_inner, device=self.dt_proj.bias.device)
        dt = torch.exp(log_dt * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        # GPT-2 style rescale of the residual-branch output projection: 1/sqrt(n_layer)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(n_layer)

    def block(
        self,
        stream: Tensor,
        norm_weight: Tensor,
        shift: Tensor,
        scale: Tensor,
        gate: Tensor,
        eps: float,
    ) -> Tensor:
        """A pre-norm block's branch as one fused node: (1 + gate) * mixer(RMSNorm(stream) *
        norm_weight * (1 + scale) + shift). It keeps the stream (and, unless
        ``recompute_in_proj``, x, and z unless ``recompute_z``) for backward; the norm and the
        rest are recomputed."""
        return mamba_inner(
            None,
            None,
            **self._weights(),
            save_scan=self.save_scan,
            stream=stream,
            in_proj_weight=self.in_proj.weight,
            norm_weight=norm_weight,
            shift=shift,
            scale=scale,
            norm_eps=eps,
            gate=gate,
            keep=self.kept(),
        )

    def _weights(self) -> dict:
        return dict(
            conv_weight=self.conv1d.weight[:, 0],
            conv_bias=self.conv1d.bias,
            x_proj_weight=self.x_proj.weight,
            dt_proj_weight=self.dt_proj.weight,
            out_proj_weight=self.out_proj.weight,
            A=-torch.exp(self.A_log.float()),
            D=self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            scan_backend=self.scan_backend,
            conv_backend=self.conv_backend,
        )

    def forward(self, hidden: Tensor) -> Tensor:
        weights = self._weights()
        if self.uses_fused(hidden):  # in_proj inside the node: channel-last end to end
            return mamba_inner(
                None,
                None,
                hidden=hidden,
                in_proj_weight=self.in_proj.weight,
                save_scan=self.save_scan,
                keep="" if self.recompute_in_proj else "xz",
                **weights,
            )
        # The twin, channel-major (B, E, L) between the projections: batched matmuls on
        # transposed views (BLAS transpose flags), so no activation is copied; x and z as two
        # GEMMs so that both come out contiguous
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        x = _weight_matmul(w_x, hidden.transpose(1, 2))  # (B, E, L)
        z = _weight_matmul(w_z, hidden.transpose(1, 2))
        return mamba_inner_ref(x, z, **weights)  # (B, L, D)

    def kept(self) -> str:
        """Which in_proj outputs a block node keeps for backward ("xz", "x" or none)."""
        if self.recompute_in_proj:
            return ""
        return "x" if self.recompute_z else "xz"

    def uses_fused(self, hidden: Tensor) -> bool:
        """Whether a call on ``hidden`` runs the fused node (else the twin)."""
        if self.fused is None:
            return hidden.device.type == "cpu"
        return self.fused and hidden.device.type != "meta"

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
            f"d_conv={self.d_conv}, dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}, "
            f"fused={self.fused!r}, recompute_in_proj={self.recompute_in_proj!r}, "
            f"recompute_z={self.recompute_z!r}, "
            f"save_scan={self.save_scan!r}"
        )


def _weight_matmul(weight: Tensor, x: Tensor) -> Tensor:
    """(O, I) @ (B, I, L) -> (B, O, L)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)
