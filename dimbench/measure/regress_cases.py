"""The speed gate's benchmarks: small kernel and block workloads, each a named callable with set-up.

Defined once, used twice: ``tests/bench/test_bench_gate.py`` hands them to pytest-benchmark, and
``dimbench regress`` runs them in interleaved rounds (``dimbench.measure.regress``). Sizes are
chosen so a call takes milliseconds on a 2-core CPU with one thread; ``repeat`` calls make one
sample, so a sample is a few milliseconds, long against the clock's resolution and short against a
scheduler time slice. Changing a case's sizes changes its ``signature``, and a baseline recorded
with other sizes is then reported as changed rather than compared.

The calibration cases measure the machine itself (an fp32 matmul, a small MLP training step, a
softmax; plain torch) in the same rounds, so a slower or busier machine does not read as a
regression.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Workload = Callable[[], object]


@dataclass(frozen=True)
class Case:
    """One benchmark: ``setup(device)`` builds the inputs and returns the callable to time."""

    name: str
    group: str  # "kernel" | "block" | "calibration"
    setup: Callable[[torch.device], Workload]
    repeat: int = 1  # calls per timed sample
    params: dict = field(default_factory=dict)

    @property
    def signature(self) -> str:
        """What the case measures; a baseline sample is comparable only under the same one."""
        return json.dumps({"repeat": self.repeat, **self.params}, sort_keys=True)


def _gen(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


# ---------------------------------------------------------------------- kernels

SCAN = dict(batch=1, dim=128, dstate=16, length=256)
ATTN = dict(batch=1, heads=4, length=256, head_dim=64)
CONV = dict(batch=1, dim=512, length=1024, width=3)


def _scan_inputs(device: torch.device, requires_grad: bool) -> dict[str, torch.Tensor]:
    b, d, n, length = SCAN["batch"], SCAN["dim"], SCAN["dstate"], SCAN["length"]
    g = _gen(device)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    inputs = {
        "u": rand(b, d, length),
        "delta": rand(b, d, length) - 4.0,
        "A": -torch.exp(rand(d, n)),
        "B": rand(b, n, length),
        "C": rand(b, n, length),
        "D": torch.ones(d, device=device),
        "z": rand(b, d, length),
        "delta_bias": torch.full((d,), -4.0, device=device),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


def _scan_forward(backend: str) -> Callable[[torch.device], Workload]:
    def setup(device: torch.device) -> Workload:
        from dimbench.ops import selective_scan

        inputs = _scan_inputs(device, requires_grad=False)

        def run() -> object:
            with torch.no_grad():
                return selective_scan(**inputs, delta_softplus=True, backend=backend)

        return run

    return setup


def _scan_train(backend: str) -> Callable[[torch.device], Workload]:
    def setup(device: torch.device) -> Workload:
        from dimbench.ops import selective_scan

        inputs = _scan_inputs(device, requires_grad=True)
        params = list(inputs.values())

        def run() -> object:
            out = selective_scan(**inputs, delta_softplus=True, backend=backend)
            grads = torch.autograd.grad(out, params, torch.ones_like(out))
            return grads

        return run

    return setup


def _attention_forward(backend: str) -> Callable[[torch.device], Workload]:
    def setup(device: torch.device) -> Workload:
        from dimbench.ops import attention

        g = _gen(device)
        shape = (ATTN["batch"], ATTN["heads"], ATTN["length"], ATTN["head_dim"])
        q, k, v = (torch.randn(*shape, generator=g, device=device) for _ in range(3))

        def run() -> object:
            with torch.no_grad():
                return attention(q, k, v, backend=backend)

        return run

    return setup


def _conv_forward(backend: str) -> Callable[[torch.device], Workload]:
    def setup(device: torch.device) -> Workload:
        from dimbench.ops import causal_conv1d

        g = _gen(device)
        d, width = CONV["dim"], CONV["width"]
        x = torch.randn(CONV["batch"], d, CONV["length"], generator=g, device=device)
        w = torch.randn(d, width, generator=g, device=device)
        b = torch.randn(d, generator=g, device=device)

        def run() -> object:
            with torch.no_grad():
                return causal_conv1d(x, w, b, activation="silu", backend=backend)

        return run

    return setup


# ---------------------------------------------------------------------- blocks

DIM_BLOCK = dict(batch=2, hidden=128, d_state=16, expand=2, d_conv=3, grid=16)
DIT_BLOCK = dict(batch=2, hidden=128, heads=4, grid=16)


def _train_step(module: torch.nn.Module, *inputs: torch.Tensor) -> Workload:
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> object:
        out = module(*inputs)
        grads = torch.autograd.grad(out, params + [inputs[0]], torch.ones_like(out))
        return grads

    return run


def _dim_block_train(device: torch.device) -> Workload:
    from dimbench.models.dim import DiMBlock
    from dimbench.models.mamba_mixer import MambaMixer

    cfg = DIM_BLOCK
    torch.manual_seed(0)
    hidden = cfg["hidden"]
    mixer = MambaMixer(hidden, cfg["d_state"], cfg["d_conv"], cfg["expand"])
    block = DiMBlock(hidden, mixer).to(device)
    # DiM's token count for a grid x grid latent: 2 cond + 3 split tokens + (grid + 3)^2 padded
    pad = cfg["d_conv"]
    tokens = 2 + pad + (cfg["grid"] + pad) ** 2
    g = _gen(device)
    stream = torch.randn(cfg["batch"], tokens, hidden, generator=g, device=device)
    modulation = 0.1 * torch.randn(cfg["batch"], 3, hidden, generator=g, device=device)
    return _train_step(block, stream.requires_grad_(True), modulation)


def _dit_block_train(device: torch.device) -> Workload:
    from dimbench.baselines.dit import DiTBlock

    cfg = DIT_BLOCK
    torch.manual_seed(0)
    block = DiTBlock(cfg["hidden"], cfg["heads"]).to(device)
    g = _gen(device)
    x = torch.randn(cfg["batch"], cfg["grid"] ** 2, cfg["hidden"], generator=g, device=device)
    c = torch.randn(cfg["batch"], cfg["hidden"], generator=g, device=device)
    return _train_step(block, x.requires_grad_(True), c)


# ---------------------------------------------------------------------- calibration
# Plain torch, no dimbench code, so a regression in dimbench cannot move them. Chosen for how
# they respond to a busy machine: a compute-bound matmul barely does, while an MLP training step
# and a softmax over 1 MiB slow down with cache and memory-bandwidth contention the way the
# kernels above do (two memory-streaming neighbours: kernels +6% to +35%, MLP +18%, softmax
# +21%, matmul +2%; a 16 MiB copy, tried first, only +5%).

MATMUL = dict(n=256)
MLP = dict(tokens=512, hidden=128, mlp_ratio=4)
SOFTMAX = dict(shape=(4, 256, 256))


def _calib_matmul(device: torch.device) -> Workload:
    n = MATMUL["n"]
    g = _gen(device)
    a = torch.randn(n, n, generator=g, device=device)
    b = torch.randn(n, n, generator=g, device=device)
    out = torch.empty(n, n, device=device)
    return lambda: torch.mm(a, b, out=out)


def _calib_mlp(device: torch.device) -> Workload:
    torch.manual_seed(0)
    hidden = MLP["hidden"]
    net = torch.nn.Sequential(
        torch.nn.LayerNorm(hidden),
        torch.nn.Linear(hidden, MLP["mlp_ratio"] * hidden),
        torch.nn.GELU(),
        torch.nn.Linear(MLP["mlp_ratio"] * hidden, hidden),
    ).to(device)
    x = torch.randn(MLP["tokens"], hidden, generator=_gen(device), device=device)
    return _train_step(net, x.requires_grad_(True))


def _calib_softmax(device: torch.device) -> Workload:
    x = torch.randn(*SOFTMAX["shape"], generator=_gen(device), device=device)
    return lambda: torch.softmax(x, dim=-1)


CALIBRATION = (
    Case("calib/matmul", "calibration", _calib_matmul, repeat=4, params=MATMUL),
    Case("calib/mlp-forward+backward", "calibration", _calib_mlp, params=MLP),
    Case("calib/softmax", "calibration", _calib_softmax, repeat=8, params=SOFTMAX),
)


def gate_cases(device: str | torch.device = "cpu") -> list[Case]:
    """Every benchmark the gate compares on ``device`` (calibration excluded), in a fixed order:
    each available scan backend forward and forward+backward, each attention and conv backend
    forward, a DiM block and a DiT block forward+backward."""
    from dimbench.ops import attention_backends, conv_backends, scan_backends

    device = torch.device(device)
    cases: list[Case] = []
    for backend in scan_backends(device):
        fast = backend != "ref"  # the reference scan is a Python loop over the sequence
        cases += [
            Case(
                f"scan/forward[{backend}]",
                "kernel",
                _scan_forward(backend),
                repeat=16 if fast else 1,
                params={**SCAN, "backend": backend},
            ),
            Case(
                f"scan/forward+backward[{backend}]",
                "kernel",
                _scan_train(backend),
                repeat=8 if fast else 1,
                params={**SCAN, "backend": backend},
            ),
        ]
    for backend in attention_backends(device):
        cases.append(
            Case(
                f"attention/forward[{backend}]",
                "kernel",
                _attention_forward(backend),
                repeat=4,
                params={**ATTN, "backend": backend},
            )
        )
    for backend in conv_backends(device):
        cases.append(
            Case(
                f"causal-conv/forward[{backend}]",
                "kernel",
                _conv_forward(backend),
                repeat=4,
                params={**CONV, "backend": backend},
            )
        )
    cases += [
        Case("dim-block/forward+backward", "block", _dim_block_train, params=DIM_BLOCK),
        Case("dit-block/forward+backward", "block", _dit_block_train, params=DIT_BLOCK),
    ]
    return cases
