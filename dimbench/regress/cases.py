"""The speed gate's benchmarks: small kernel and block workloads, each a named callable with set-up.

The head's cases measure both sides (asv's model: the benchmarks come from the tree under test,
the library from each revision). This file is loaded by its path into each side's worker
process, where ``dimbench`` is that side's source tree, so it imports nothing from
``dimbench.regress`` and calls only the public API that older revisions have too:
``dimbench.ops.selective_scan`` / ``causal_conv1d`` / ``attention`` and
``dimbench.registry.create_model`` (one block of a tiny model, forward+backward).

Sizes are chosen so a call takes milliseconds on a 2-core CPU with one thread; ``repeat`` calls
make one sample, so a sample is a few milliseconds, long against the clock's resolution and short
against a scheduler time slice. Changing a case's sizes changes its ``signature``, and a stored
baseline recorded with other sizes is then reported as changed rather than compared.

The calibration cases measure the machine itself (an fp32 matmul, a small MLP training step, a
softmax; plain torch) in the same rounds, so a slower or busier machine does not read as a
regression.

``benchmarks/test_bench_gate.py`` hands the same cases to pytest-benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TimedCall = Callable[[], object]  # what a case's setup returns: the call the worker times


@dataclass(frozen=True)
class Case:
    """One benchmark: ``setup(device)`` builds the inputs and returns the callable to time."""

    name: str
    group: str  # "kernel" | "block" | "calibration"
    setup: Callable[[torch.device], TimedCall]
    repeat: int = 1  # calls per timed sample
    params: dict = field(default_factory=dict)

    @property
    def signature(self) -> str:
        """What the case measures; a stored sample is comparable only under the same one."""
        return json.dumps({"repeat": self.repeat, **self.params}, sort_keys=True)


def _gen(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def _train_step(module: torch.nn.Module, *inputs: torch.Tensor, **kwargs: object) -> TimedCall:
    """Forward, then the gradients of every parameter and of the first input."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> object:
        out = module(*inputs, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out, params + [inputs[0]], torch.ones_like(out))

    return run


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


def _scan_forward(backend: str) -> Callable[[torch.device], TimedCall]:
    def setup(device: torch.device) -> TimedCall:
        from dimbench.ops import selective_scan

        inputs = _scan_inputs(device, requires_grad=False)

        def run() -> object:
            with torch.no_grad():
                return selective_scan(**inputs, delta_softplus=True, backend=backend)

        return run

    return setup


def _scan_train(backend: str) -> Callable[[torch.device], TimedCall]:
    def setup(device: torch.device) -> TimedCall:
        from dimbench.ops import selective_scan

        inputs = _scan_inputs(device, requires_grad=True)
        params = list(inputs.values())

        def run() -> object:
            out = selective_scan(**inputs, delta_softplus=True, backend=backend)
            return torch.autograd.grad(out, params, torch.ones_like(out))

        return run

    return setup


def _attention_forward(backend: str) -> Callable[[torch.device], TimedCall]:
    def setup(device: torch.device) -> TimedCall:
        from dimbench.ops import attention

        g = _gen(device)
        shape = (ATTN["batch"], ATTN["heads"], ATTN["length"], ATTN["head_dim"])
        q, k, v = (torch.randn(*shape, generator=g, device=device) for _ in range(3))

        def run() -> object:
            with torch.no_grad():
                return attention(q, k, v, backend=backend)

        return run

    return setup


def _conv_forward(backend: str) -> Callable[[torch.device], TimedCall]:
    def setup(device: torch.device) -> TimedCall:
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
# One block of a registered model, built by create_model (the public way to get one), fed the
# inputs the model itself hands its first block: captured by a forward pre-hook, so the gate
# needs to know neither the block's signature nor the model's token layout.

BLOCK = dict(batch=2, image_size=256, hidden_size=128, depth=1)  # a 16x16 token grid
DIM_BLOCK = dict(model="DiM-T/2", **BLOCK)
DIT_BLOCK = dict(model="DiT-T/2", **BLOCK)


class _Captured(Exception):
    """Stops the model's forward once its first block's inputs are seen."""


def first_block_inputs(
    model: torch.nn.Module, batch: int, image_size: int, device: torch.device
) -> tuple[tuple, dict]:
    """The (args, kwargs) the model passes ``model.blocks[0]`` on a random latent batch."""
    g = _gen(device)
    latent = image_size // 8  # the public interface: an R-px image is an (R/8)^2 x 4 latent
    x = torch.randn(batch, 4, latent, latent, generator=g, device=device)
    t = torch.randint(0, 1000, (batch,), generator=g, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Captured

    handle = model.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(x, t, y)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in seen:
        raise RuntimeError(f"{type(model).__name__}.forward never called blocks[0]")

    def fresh(v: object) -> object:
        return v.detach().clone() if isinstance(v, torch.Tensor) else v

    return tuple(map(fresh, seen["args"])), {k: fresh(v) for k, v in seen["kwargs"].items()}


def _block_train(config: dict, scan_backend: str) -> Callable[[torch.device], TimedCall]:
    def setup(device: torch.device) -> TimedCall:
        from dimbench.registry import create_model

        torch.manual_seed(0)
        model = create_model(
            config["model"],
            image_size=config["image_size"],
            device=device,
            scan_backend=scan_backend,
            hidden_size=config["hidden_size"],
            depth=config["depth"],
        )
        args, kwargs = first_block_inputs(model, config["batch"], config["image_size"], device)
        return _train_step(model.blocks[0], args[0].requires_grad_(True), *args[1:], **kwargs)

    return setup


# ---------------------------------------------------------------------- calibration
# Plain torch, no dimbench code, so a regression in dimbench cannot move them. Chosen for how
# they respond to a busy machine: a compute-bound matmul barely does, while an MLP training step
# and a softmax over 1 MiB slow down with cache and memory-bandwidth contention the way the
# kernels above do (two memory-streaming neighbours: kernels +6% to +35%, MLP +18%, softmax
# +21%, matmul +2%; a 16 MiB copy, tried first, only +5%).

MATMUL = dict(n=256)
MLP = dict(tokens=512, hidden=128, mlp_ratio=4)
SOFTMAX = dict(shape=(4, 256, 256))


def _calib_matmul(device: torch.device) -> TimedCall:
    n = MATMUL["n"]
    g = _gen(device)
    a = torch.randn(n, n, generator=g, device=device)
    b = torch.randn(n, n, generator=g, device=device)
    out = torch.empty(n, n, device=device)
    return lambda: torch.mm(a, b, out=out)


def _calib_mlp(device: torch.device) -> TimedCall:
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


def _calib_softmax(device: torch.device) -> TimedCall:
    x = torch.randn(*SOFTMAX["shape"], generator=_gen(device), device=device)
    return lambda: torch.softmax(x, dim=-1)


CALIBRATION = (
    Case("calib/matmul", "calibration", _calib_matmul, repeat=4, params=MATMUL),
    Case("calib/mlp-forward+backward", "calibration", _calib_mlp, params=MLP),
    Case("calib/softmax", "calibration", _calib_softmax, repeat=8, params=SOFTMAX),
)


def gate_cases(device: str | torch.device = "cpu") -> list[Case]:
    """Every benchmark the gate compares on ``device`` (calibration excluded), in a fixed order.

    On the CPU: the ``cpu`` (C++) scan forward and forward+backward and causal conv (a base that
    predates the conv kernel cannot run that case: it is reported as new), attention
    (``sdpa``), a DiM and a DiT block forward+backward. On CUDA the scan is the ``triton`` one
    and the conv the default (``auto``)."""
    cuda = torch.device(device).type == "cuda"
    scan = "triton" if cuda else "cpu"
    conv = "auto" if cuda else "cpu"
    blocks = "auto" if cuda else "cpu"
    return [
        Case(
            f"scan/forward[{scan}]",
            "kernel",
            _scan_forward(scan),
            repeat=16,
            params={**SCAN, "backend": scan},
        ),
        Case(
            f"scan/forward+backward[{scan}]",
            "kernel",
            _scan_train(scan),
            repeat=8,
            params={**SCAN, "backend": scan},
        ),
        Case(
            f"causal-conv/forward[{conv}]",
            "kernel",
            _conv_forward(conv),
            repeat=4,
            params={**CONV, "backend": conv},
        ),
        Case(
            "attention/forward[sdpa]",
            "kernel",
            _attention_forward("sdpa"),
            repeat=4,
            params={**ATTN, "backend": "sdpa"},
        ),
        Case(
            "dim-block/forward+backward",
            "block",
            _block_train(DIM_BLOCK, blocks),
            params={**DIM_BLOCK, "scan_backend": blocks},
        ),
        Case(
            "dit-block/forward+backward",
            "block",
            _block_train(DIT_BLOCK, blocks),
            params=DIT_BLOCK,
        ),
    ]
