"""The "triton" selective-scan backend: Triton kernels for CUDA tensors (scan_triton_kernels.py).

fp32 / bf16 / fp16 inputs, float32 state, mamba_ssm's semantics (D skip, z gate, delta_bias,
softplus), B and C shared or grouped. The forward saves the state at every chunk start (a chunk
is one warp's 32 lanes x one 16-byte vector of steps: 256 for bf16/fp16, 128 for fp32); the
backward recomputes each chunk from there (see scan_triton_kernels for the algorithm).

Importing this module registers the backend without importing triton. With
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors in Triton's interpreter (for tests);
the backend is then ranked below ``ref`` so ``auto`` never picks it.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from dimbench.ops import backends, scan, triton_util

Tensor = torch.Tensor

PRIORITY = 20  # above "cpu" (10) and "ref" (0), below "mamba_ssm" (30)
LANES = 32  # a chunk is one warp's lanes times VEC steps each
CONFIG_ENV = "DIMBENCH_TRITON_SCAN"  # e.g. "fwd=4,bwd=4,fwd_maxnreg=168" (see launch_config)


@functools.cache
def _kernels():
    from dimbench.ops import scan_triton_kernels

    return scan_triton_kernels


def vec_for(u: Tensor, z: Tensor | None = None) -> int:
    """Steps per lane: one 16-byte vector of the narrowest activation dtype."""
    itemsize = min(t.element_size() for t in (u, z) if t is not None)
    return max(1, 16 // itemsize)


def chunk_for(u: Tensor, z: Tensor | None = None) -> int:
    return LANES * vec_for(u, z)


def n_chunks_for(u: Tensor, z: Tensor | None = None) -> int:
    """Chunks of the longest walk: a row plus up to VEC - 1 leading steps of misalignment."""
    vec, length = vec_for(u, z), u.shape[-1]
    return -(-(length + vec - 1) // chunk_for(u, z))


def saved_shapes(
    u: Tensor, A: Tensor, z: Tensor | None, B: Tensor | None = None, C: Tensor | None = None
):
    """The saved states of a scan of u (B, C: not needed here, the protocol passes them)."""
    batch, dim, _ = u.shape
    return [((batch, dim, n_chunks_for(u, z), A.shape[1]), torch.float32)]


@dataclass(frozen=True)
class LaunchConfig:
    block: int = 4  # channels per program, one warp each
    maxnreg: int | None = None  # register cap per thread (occupancy against spills)


def launch_config(kind: str) -> LaunchConfig:
    """The launch config of the "fwd" or "bwd" kernel: $DIMBENCH_TRITON_SCAN, else defaults.

    Format: comma-separated ``fwd=B``, ``bwd=B`` (channels per program: 1, 2, 4, 8 or 16) and
    ``fwd_maxnreg=R``, ``bwd_maxnreg=R`` (0: no cap). tools/gpu_check.py measures them.
    """
    spec = os.environ.get(CONFIG_ENV, "").strip()
    values: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = (x.strip() for x in item.partition("="))
        valid = name in ("fwd", "bwd", "fwd_maxnreg", "bwd_maxnreg") and value.isdigit()
        if valid and name in ("fwd", "bwd"):
            valid = int(value) in (1, 2, 4, 8, 16)
        if not valid:
            raise ValueError(
                f"{CONFIG_ENV}: expected e.g. fwd=4,bwd=8,fwd_maxnreg=168; got {spec!r}"
            )
        values[name] = int(value)
    return LaunchConfig(
        block=values.get(kind, LaunchConfig.block),
        maxnreg=values.get(f"{kind}_maxnreg") or None,
    )


def _maxnreg(cfg: LaunchConfig) -> dict:
    # a compile option of the CUDA backend only; the interpreter takes no such argument
    return {"maxnreg": cfg.maxnreg} if cfg.maxnreg and not triton_util.interpreting() else {}


def _contig(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _shifted_copies(M: Tensor, vec: int, length_pad: int) -> Tensor:
    """(B, G, N, L) -> (B, vec, G, N, L_pad) float32 with copy s shifted right by s steps."""
    Mg = M.unsqueeze(1) if M.dim() == 3 else M
    batch, groups, n, length = Mg.shape
    out = Mg.new_zeros((batch, vec, groups, n, length_pad), dtype=torch.float32)
    for s in range(vec):
        out[:, s, :, :, s : s + length] = Mg
    return out


class _Launch:
    """What both kernels need: the shapes, the channel sets, the shifted B and C."""

    def __init__(self, u, A, B, C, z, block: int):
        self.batch, self.dim, self.length = u.shape
        self.n = A.shape[1]
        groups = 1 if B.dim() == 3 else B.shape[1]
        if (1 if C.dim() == 3 else C.shape[1]) != groups:
            raise ValueError("the triton scan backend needs B and C with the same number of groups")
        self.groups, self.dim_per_group = groups, self.dim // groups
        self.vec, self.chunk = vec_for(u, z), chunk_for(u, z)
        self.n_chunks = n_chunks_for(u, z)
        self.length_pad = self.n_chunks * self.chunk
        self.stride = self.vec // math.gcd(self.length, self.vec)  # rows sharing alignment
        self.block = block
        if self.n > self.chunk:
            raise ValueError(f"the triton scan backend supports d_state <= {self.chunk}")
        per_set = -(-self.dim // self.stride)
        self.grid = (self.batch, self.stride, -(-per_set // block))
        self.Bs = _shifted_copies(B, self.vec, self.length_pad)
        self.Cs = _shifted_copies(C, self.vec, self.length_pad)

    def common(self):
        return (
            self.dim,
            self.length,
            self.n_chunks,
            self.length_pad,
            self.stride,
            self.dim_per_group,
            self.groups,
        )


def scan_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    save: bool = False,
    config: LaunchConfig | None = None,
) -> list[Tensor]:
    """Launch the forward kernel: ``[out]``, plus the chunk-start states when ``save``."""
    u, delta, A, D, z, delta_bias = map(_contig, (u, delta, A, D, z, delta_bias))
    cfg = config or launch_config("fwd")
    run = _Launch(u, A, B, C, z, cfg.block)
    out = torch.empty_like(u)
    ckpt = u.new_zeros((run.batch, run.dim, run.n_chunks, run.n), dtype=torch.float32)
    if run.length and run.batch and run.dim:
        _kernels().scan_fwd_kernel[run.grid](
            u,
            delta,
            A,
            run.Bs,
            run.Cs,
            D if D is not None else u,
            z if z is not None else u,
            delta_bias if delta_bias is not None else u,
            out,
            ckpt,
            *run.common(),
            N=run.n,
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus),
            BLOCK_D=run.block,
            VEC=run.vec,
            CHUNK=run.chunk,
            num_warps=run.block,
            **_maxnreg(cfg),
        )
    return [out, ckpt] if save else [out]


def scan_bwd(
    grad_out: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    ckpt: Tensor,
    config: LaunchConfig | None = None,
) -> list[Tensor | None]:
    """Launch the backward kernel; gradients of (u, delta, A, B, C, D, z, delta_bias)."""
    grad_out, u, delta, A, D, z, delta_bias = map(
        _contig, (grad_out, u, delta, A, D, z, delta_bias)
    )
    cfg = config or launch_config("bwd")
    run = _Launch(u, A, B, C, z, cfg.block)
    f32 = {"dtype": torch.float32, "device": u.device}
    gu = torch.empty_like(u)
    gdelta = torch.empty_like(delta)
    gz = torch.empty_like(z) if z is not None else None
    gA = torch.zeros((run.batch, run.dim, run.n), **f32)
    gB = torch.zeros((run.batch, run.groups, run.n, run.length), **f32)
    gC = torch.zeros_like(gB)
    gD = torch.zeros((run.batch, run.dim), **f32)
    gbias = torch.zeros((run.batch, run.dim), **f32)
    if run.length and run.batch and run.dim:
        hbuf = u.new_zeros((run.batch, run.dim, run.n_chunks + 1, run.n), dtype=torch.float32)
        _kernels().scan_bwd_kernel[run.grid](
            u,
            delta,
            A,
            run.Bs,
            run.Cs,
            D if D is not None else u,
            z if z is not None else u,
            delta_bias if delta_bias is not None else u,
            grad_out,
            ckpt.contiguous(),
            hbuf,
            gu,
            gdelta,
            gz if gz is not None else gu,
            gA,
            gB,
            gC,
            gD,
            gbias,
            *run.common(),
            N=run.n,
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus),
            SHARED_BC=run.groups == 1,
            BLOCK_D=run.block,
            VEC=run.vec,
            CHUNK=run.chunk,
            num_warps=run.block,
            **_maxnreg(cfg),
        )
    else:
        for g in (gu, gdelta, gz):
            if g is not None:
                g.zero_()
    if B.dim() == 3:
        gB, gC = gB.squeeze(1), gC.squeeze(1)
    return [
        gu,
        gdelta,
        gA.sum(0).to(A.dtype),
        gB.to(B.dtype),
        gC.to(C.dtype),
        gD.sum(0).to(D.dtype) if D is not None else None,
        gz,
        gbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    ]


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save):
    return scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save)


def backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved):
    (ckpt,) = saved
    return scan_bwd(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt)


backends.register(
    scan.ScanBackend(
        name="triton",
        device_types=triton_util.device_types(),
        # interpreted kernels are the slowest thing on a CPU: never auto's choice there
        priority=-1 if triton_util.interpreting() else PRIORITY,
        probe=triton_util.unavailable_reason,
        run=forward,
        backward=backward,
        saved_shapes=saved_shapes,
    )
)
