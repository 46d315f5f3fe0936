"""The one backend registry: what ``auto`` means per device and dtype, what a name must satisfy,
and the one-line errors; checked on a made-up op and on the real ones."""

import subprocess
import sys

import pytest
import torch

from dimbench.errors import UsageError
from dimbench.ops import backends, conv_backends, scan_backends

OP = "test_registry_op"


@pytest.fixture(scope="module")
def made_up_op():
    def impl(*args):
        return args

    for name, devices, priority, dtypes, probe in (
        ("plain", ("cpu", "cuda", backends.META), 0, None, lambda: None),
        ("fast", ("cpu",), 10, (torch.float32,), lambda: None),
        ("faster", ("cpu",), 20, None, lambda: "its library is missing"),
        ("gpu", ("cuda",), 30, None, lambda: None),
    ):
        backends.register(
            backends.Backend(
                op=OP,
                name=name,
                device_types=devices,
                priority=priority,
                dtypes=dtypes,
                probe=probe,
                run=impl,
            )
        )
    yield OP
    del backends._REGISTRY[OP]
    backends._RESOLVED.clear()


def test_auto_is_the_highest_priority_backend_that_runs(made_up_op):
    assert backends.resolve(OP, "auto", "cpu") == "fast"  # "faster" is unusable
    assert backends.resolve(OP, "auto", "cpu", "bf16") == "plain"  # "fast" takes fp32 only
    assert backends.resolve(OP, "auto", torch.device("cuda", 1)) == "gpu"
    assert backends.resolve(OP, "auto", "meta") == "plain"  # the one that lists meta
    assert backends.available(OP) == ["gpu", "fast", "plain"]
    assert backends.available(OP, "cpu", torch.bfloat16) == ["plain"]


def test_a_name_must_exist_run_there_and_take_the_dtype(made_up_op):
    assert backends.resolve(OP, "fast", "cpu", torch.float32) == "fast"
    assert backends.resolve(OP, "faster", "meta") == "faster"  # shapes only: any name
    cases = [
        ("nope", "cpu", None, "unknown test_registry_op backend 'nope'; available here: gpu"),
        ("faster", "cpu", None, "is unavailable \\(its library is missing\\)"),
        ("gpu", "cpu", None, "runs on cuda, not cpu; available here: fast, plain"),
        ("fast", "cpu", "fp16", "takes float32 inputs, not float16; available here: plain"),
    ]
    for name, device, dtype, message in cases:
        with pytest.raises(backends.BackendError, match=message) as err:
            backends.resolve(OP, name, device, dtype)
        assert "\n" not in str(err.value)
        assert isinstance(err.value, UsageError | RuntimeError | ValueError)


def test_the_real_ops_auto_choices_on_this_machine():
    scan = "cpu" if "cpu" in scan_backends("cpu") else "ref"
    conv = "cpu" if "cpu" in conv_backends("cpu") else "torch"
    for dtype, expected in (("fp32", conv), ("bf16", conv), ("fp16", "torch")):
        assert backends.resolve("conv", "auto", "cpu", dtype) == expected, dtype
    assert backends.resolve("scan", "auto", "cpu", "bf16") == scan
    assert backends.resolve("attention", "auto", "cpu", "bf16") == "sdpa"
    meta = {op: backends.resolve(op, "auto", "meta") for op in ("scan", "conv", "attention")}
    assert meta == {"scan": "ref", "conv": "torch", "attention": "sdpa"}
    if not torch.cuda.is_available():
        assert backends.resolve("attention", "auto", "cuda", "bf16") == "sdpa"
        assert backends.resolve("scan", "auto", "cuda") == "ref"


def test_importing_the_registry_alone_loads_every_op():
    """backends imports no op module; the package's __init__, which runs first, loads them."""
    code = (
        "import dimbench.ops.backends as b; "
        "print(sorted(op for op in b._REGISTRY), b.available('conv'))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("['attention', 'conv', 'scan']"), res.stdout
    source = backends.__file__
    with open(source) as f:
        imports = [line for line in f if line.startswith(("import ", "from "))]
    assert not any("dimbench.ops" in line for line in imports), imports
