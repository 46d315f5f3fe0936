"""The speed gate's benchmarks under pytest-benchmark: small sizes, milliseconds per call.

The same cases as `dimbench regress` (dimbench/regress/cases.py), on one torch thread with glibc
keeping its heap, as the gate's workers run them; the calibration kernels are included so a
pytest-benchmark JSON can be normalised the same way. Run:

    pytest benchmarks/test_bench_gate.py -m bench --benchmark-enable --benchmark-json=FILE

pytest-benchmark times each case on its own (no interleaving, the installed dimbench only) with
the wall clock; the gate's verdicts come from `dimbench regress`, which measures the head and the
base revision in interleaved rounds and uses CPU time.
"""

import pytest
import torch

from dimbench.regress.cases import CALIBRATION, gate_cases
from dimbench.regress.worker import keep_heap

pytestmark = pytest.mark.bench  # also without benchmarks/conftest.py

CASES = [*gate_cases("cpu"), *CALIBRATION]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    keep_heap()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gate_case(benchmark, case):
    benchmark.group = case.group
    benchmark.extra_info.update(signature=case.signature, repeat=case.repeat, threads=1)
    fn = case.setup(torch.device("cpu"))

    def sample() -> None:
        for _ in range(case.repeat):
            fn()

    benchmark.pedantic(sample, rounds=20, iterations=1, warmup_rounds=2)
