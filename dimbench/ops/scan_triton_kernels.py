"""Triton kernels of the selective scan (imported on first use by scan_triton; needs triton).

Layout (the mamba_ssm CUDA kernel's, expressed in Triton): one warp per channel, time along the
warp's lanes in runs of VEC consecutive steps per lane (one 16-byte vector load: 8 bf16 or 4
fp32), so a chunk is CHUNK = 32 * VEC steps; a program holds BLOCK_D channels (one per warp) and
loops over the state index n (unrolled), so the state never needs a reduction and A, D,
delta_bias are per-warp scalars. Within a chunk the recurrence  x_t = a_t x_{t-1} + b_t
(a_t = exp(dt_t A), b_t = dt_t u_t B_t) is a parallel associative scan over (a, b) pairs: VEC
sequential steps in each lane, then shuffles across the warp.

Vector loads need every row's chunk to start 16-byte aligned. Rows are L elements long, so
row d starts (d * L) mod VEC elements past an aligned address; each row is walked from the
aligned address before it (the first steps masked), and a program takes channels
g, g + s, g + 2s, ... with s = VEC / gcd(L, VEC), which all share that offset. B and C are
read from VEC shifted float32 copies the wrapper makes (tiny: N rows per batch), the one whose
shift matches the program's offset, so they are aligned too.

Carries: the state after each chunk (an in-warp reduction picks the last step) is written to
ckpt (B, D, n_chunks, N) and read back by the whole warp after a barrier; the backward reads
the same states. a_t <= 1 for delta >= 0 and A <= 0, and
products of them only shrink: nothing overflows for any delta (no exp of a cumulative sum).

Backward, chunks last to first: recompute the chunk's states from ckpt (the same scan), then
the adjoint  h_t = a_{t+1} h_{t+1} + gy_t C_t  as a reverse scan. That recurrence needs
a_{t+1} at step t; rather than recompute exponentials shifted by one (a cross-lane shift), the
scan carries (first a, product of the other a's, h) triples, whose composition is associative.
The carry between chunks, a_{t0} h_{t0} of the later chunk's first step, goes through hbuf the
way states go through ckpt. dB and dC sum over channels: over the program's warps when B, C
are shared (groups == 1), then float32 atomic adds across programs (so their last bits depend
on the order programs finish in). dA, dD and d(delta_bias) come back as per-(batch, channel)
sums the wrapper adds up.

Per-state values (chunk-end states, hand-offs, dA) are gathered into column n of a register
tile in the main layout and stored once per chunk: a per-n store of a (channels,) vector would
cost a shared-memory layout conversion and two barriers for every n.

Checked by compiling for sm_90 without a GPU (triton.compile with a GPUTarget, then the SASS):
the forward is about 22 instructions per (channel, state, step) at bf16 with no spills (the
first design, a (channels, states, time) tile with time across lanes, was about 70). The
backward is about 80, most of it shuffles: Triton lowers ``associative_scan(reverse=True)`` by
flipping the data across lanes with butterfly shuffles, which a hand-written kernel would
avoid with a single suffix scan.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dimbench.ops.triton_math import sigmoid
from dimbench.ops.triton_util import interpreting, vectorize_interpreter_scan

if interpreting():
    vectorize_interpreter_scan()

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def softplus(x):
    """log(1 + exp(x)) for any x: max(x, 0) + log1p(exp(-|x|)), log1p done accurately."""
    e = tl.exp(-tl.abs(x))
    one_p = 1.0 + e
    denom = tl.where(one_p == 1.0, 1.0, one_p - 1.0)
    log1p = tl.where(one_p == 1.0, e, tl.log(one_p) * (e / denom))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _adjoint_combine(f1, p1, q1, f2, p2, q2):
    # Reverse scan: (f1, p1, q1) sums the later segment, (f2, p2, q2) the earlier one, each as
    # (a of its first step, product of its other a's, h at its first step from its own terms).
    # h_first(earlier + later) = q2 + p2 * f1 * q1.
    g = p2 * f1
    return f2, g * p1, q2 + g * q1


@triton.jit
def _program_rows(dim, length, stride, BLOCK_D: tl.constexpr, VEC: tl.constexpr):
    """This program's channels (g, g+s, ...), their mask, flat row starts rounded down to an
    aligned address, and the shared misalignment (rows are walked from the aligned start).
    Channels past the end are clamped to the last one, so that loads need no mask (a masked
    load costs a register move per element); stores are masked."""
    pid_b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    blk = tl.program_id(2)
    chan = g + stride * (blk * BLOCK_D + tl.arange(0, BLOCK_D))
    mask_d = chan < dim
    chan = tl.minimum(chan, dim - 1)
    mis = ((pid_b * dim + g) * length) % VEC
    starts = (pid_b * dim + chan) * length - mis  # multiples of VEC
    return pid_b, chan, mask_d, mis, starts


@triton.jit
def scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    Bs_ptr,  # (batch, VEC, groups, N, L_pad) float32: copy s shifted right by s steps
    Cs_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    ckpt_ptr,  # (batch, dim, n_chunks, N) float32: state at each chunk start
    dim,
    length,
    n_chunks,
    L_pad,
    stride,
    dim_per_group,
    n_groups,
    N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VEC: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b, chan, mask_d, mis, starts = _program_rows(dim, length, stride, BLOCK_D, VEC)
    offs = tl.arange(0, CHUNK)
    first = (offs == 0)[None, :]
    last = (offs == CHUNK - 1)[None, :]
    bc_rows = ((pid_b * VEC + mis) * n_groups + chan // dim_per_group) * N * L_pad
    ck_rows = (pid_b * dim + chan) * n_chunks * N
    keep = mask_d[:, None] & (offs < N)[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + chan).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan).to(tl.float32)
    for c in range(tl.cdiv(length + mis, CHUNK)):
        t = c * CHUNK + offs - mis
        m = mask_d[:, None] & ((t >= 0) & (t < length))[None, :]
        at = tl.multiple_of(starts + c * CHUNK, VEC)[:, None] + offs[None, :]
        u = tl.load(u_ptr + at, mask=m, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(m, dt, 0.0)  # a = 1, b = 0 outside the row: the state rides through
        dtu = dt * u
        bc_at = tl.multiple_of(bc_rows + c * CHUNK, VEC)[:, None] + offs[None, :]
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        states = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        for n in tl.static_range(N):
            a2 = tl.load(A_ptr + chan * N + n).to(tl.float32) * LOG2E
            s0 = tl.load(ckpt_ptr + ck_rows + c * N + n)
            Bn = tl.load(Bs_ptr + bc_at + n * L_pad)
            Cn = tl.load(Cs_ptr + bc_at + n * L_pad)
            a = tl.exp2(dt * a2[:, None])
            b = dtu * Bn
            b = tl.where(first, b + a * s0[:, None], b)
            _, x = tl.associative_scan((a, b), axis=1, combine_fn=_linear_combine)
            y += x * Cn
            # the state after the chunk's last step goes to column n of a tile stored once per
            # chunk (a vector store in this layout; no shared-memory round trip per n)
            s1 = tl.sum(tl.where(last, x, 0.0), axis=1)
            states = tl.where(offs[None, :] == n, s1[:, None], states)
        nxt = ckpt_ptr + ck_rows + (c + 1) * N
        tl.store(nxt[:, None] + offs[None, :], states, mask=keep & (c + 1 < n_chunks))
        tl.debug_barrier()  # the states stored above are read by every lane next chunk
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + at, mask=m, other=0.0).to(tl.float32)
            y = y * zv * sigmoid(zv)
        tl.store(out_ptr + at, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    Bs_ptr,
    Cs_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    gout_ptr,
    ckpt_ptr,
    hbuf_ptr,  # (batch, dim, n_chunks + 1, N) float32, zeroed: a h at each chunk start
    gu_ptr,
    gdelta_ptr,
    gz_ptr,
    gA_ptr,  # (batch, dim, N) float32
    gB_ptr,  # (batch, groups, N, L) float32, zeroed; atomics
    gC_ptr,
    gD_ptr,  # (batch, dim) float32
    gbias_ptr,
    dim,
    length,
    n_chunks,
    L_pad,
    stride,
    dim_per_group,
    n_groups,
    N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    SHARED_BC: tl.constexpr,  # one group: the program's channels share B and C
    BLOCK_D: tl.constexpr,
    VEC: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_b, chan, mask_d, mis, starts = _program_rows(dim, length, stride, BLOCK_D, VEC)
    offs = tl.arange(0, CHUNK)
    first = (offs == 0)[None, :]
    last = (offs == CHUNK - 1)[None, :]
    keep = mask_d[:, None] & (offs < N)[None, :]
    grp = chan // dim_per_group
    bc_rows = ((pid_b * VEC + mis) * n_groups + grp) * N * L_pad
    g_rows = (pid_b * n_groups + grp) * N * length  # into gB / gC, unshifted
    ck_rows = (pid_b * dim + chan) * n_chunks * N
    hb_rows = (pid_b * dim + chan) * (n_chunks + 1) * N
    if HAS_D:
        Dv = tl.load(D_ptr + chan).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chan).to(tl.float32)
    gD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    gbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    gA = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)  # column n: dA[:, n]
    n_prog = tl.cdiv(length + mis, CHUNK)
    for i in range(n_prog):
        c = n_prog - 1 - i
        t = c * CHUNK + offs - mis
        mask_t = (t >= 0) & (t < length)
        m = mask_d[:, None] & mask_t[None, :]
        at = tl.multiple_of(starts + c * CHUNK, VEC)[:, None] + offs[None, :]
        u = tl.load(u_ptr + at, mask=m, other=0.0).to(tl.float32)
        dt_raw = tl.load(delta_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
        dt = dt_raw
        if SOFTPLUS:
            dt = softplus(dt_raw)
        dt = tl.where(m, dt, 0.0)
        dtu = dt * u
        gout = tl.load(gout_ptr + at, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + at, mask=m, other=0.0).to(tl.float32)
            sig = sigmoid(zv)
            gy = gout * zv * sig
        else:
            gy = gout
        bc_at = tl.multiple_of(bc_rows + c * CHUNK, VEC)[:, None] + offs[None, :]
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        gu = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        gdt = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        handoff = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)  # column n: a h at the start
        for n in tl.static_range(N):
            An = tl.load(A_ptr + chan * N + n).to(tl.float32)
            x0 = tl.load(ckpt_ptr + ck_rows + c * N + n)
            Bn = tl.load(Bs_ptr + bc_at + n * L_pad)
            Cn = tl.load(Cs_ptr + bc_at + n * L_pad)
            a = tl.exp2(dt * (An * LOG2E)[:, None])
            bx = dtu * Bn
            _, x = tl.associative_scan(
                (a, tl.where(first, bx + a * x0[:, None], bx)), axis=1, combine_fn=_linear_combine
            )
            if HAS_Z:
                y += x * Cn
            # adjoint; the later chunk's a h enters at this chunk's last step
            carry = tl.load(hbuf_ptr + hb_rows + (c + 1) * N + n)
            beta = gy * Cn
            beta = tl.where(last, beta + carry[:, None], beta)
            _, _, h = tl.associative_scan(
                (a, tl.full(a.shape, 1.0, tl.float32), beta),
                axis=1,
                combine_fn=_adjoint_combine,
                reverse=True,
            )
            ah0 = tl.sum(tl.where(first, a * h, 0.0), axis=1)
            handoff = tl.where(offs[None, :] == n, ah0[:, None], handoff)
            # a_t x_{t-1}: exact from the checkpoint at the first step, x_t - b_t after it
            ax = tl.where(first, a * x0[:, None], x - bx)
            hx = h * ax
            hB = h * Bn
            gu += hB * dt
            gdt += hB * u + hx * An[:, None]
            gA = tl.where(offs[None, :] == n, gA + tl.sum(hx * dt, axis=1)[:, None], gA)
            gBn = h * dtu
            gCn = gy * x
            if SHARED_BC:
                gb_at = (pid_b * N + n) * length + t
                tl.atomic_add(gB_ptr + gb_at, tl.sum(gBn, axis=0), mask=mask_t, sem="relaxed")
                tl.atomic_add(gC_ptr + gb_at, tl.sum(gCn, axis=0), mask=mask_t, sem="relaxed")
            else:
                g_at = g_rows[:, None] + n * length + t[None, :]
                tl.atomic_add(gB_ptr + g_at, gBn, mask=m, sem="relaxed")
                tl.atomic_add(gC_ptr + g_at, gCn, mask=m, sem="relaxed")
        here = hbuf_ptr + hb_rows + c * N
        tl.store(here[:, None] + offs[None, :], handoff, mask=keep)
        tl.debug_barrier()  # the hand-offs stored above are read by every lane next chunk
        if HAS_D:
            gu += gy * Dv[:, None]
            gD += tl.sum(gy * u, axis=1)
        if HAS_Z:
            if HAS_D:
                y += Dv[:, None] * u
            gz = gout * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(gz_ptr + at, gz.to(gz_ptr.dtype.element_ty), mask=m)
        tl.store(gu_ptr + at, gu.to(gu_ptr.dtype.element_ty), mask=m)
        if SOFTPLUS:
            gdt = gdt * sigmoid(dt_raw)
        gdt = tl.where(m, gdt, 0.0)
        if HAS_BIAS:
            gbias += tl.sum(gdt, axis=1)
        tl.store(gdelta_ptr + at, gdt.to(gdelta_ptr.dtype.element_ty), mask=m)
    tl.store(gA_ptr + ((pid_b * dim + chan) * N)[:, None] + offs[None, :], gA, mask=keep)
    if HAS_D:
        tl.store(gD_ptr + pid_b * dim + chan, gD, mask=mask_d)
    if HAS_BIAS:
        tl.store(gbias_ptr + pid_b * dim + chan, gbias, mask=mask_d)
