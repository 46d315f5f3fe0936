"""The one device timer (measure/clocks.py): its CPU and CUDA clocks, and that measurement,
calibration, the gate's worker and the GPU runbook all take their clocks from it."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch

import dimbench
from dimbench.measure import calibrate, clocks, timing
from dimbench.regress import worker

ROOT = Path(dimbench.__file__).resolve().parents[1]
CLOCKS_FILE = Path(clocks.__file__).resolve()


def busy(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


# ----------------------------------------------------------------------------- CPU


def test_wall_clock_counts_sleep_and_process_clock_does_not():
    wall, cpu = clocks.CpuClock(clocks.PERF_COUNTER), clocks.CpuClock(clocks.PROCESS_TIME)
    assert wall.name == "perf_counter" and cpu.name == "process_time"
    with wall.span() as w, cpu.span() as c:
        time.sleep(0.05)
    assert 0.045 < w.seconds < 2.0 and w.ms == pytest.approx(w.seconds * 1e3)
    assert c.seconds < 0.02  # asleep: no CPU time
    with cpu.span() as c:
        busy(0.05)
    assert c.seconds > 0.01  # spinning: CPU time (a shared core may give it less than 50 ms)


def test_cpu_clock_time_is_milliseconds_of_one_call():
    ms = clocks.CpuClock().time(lambda: time.sleep(0.02))
    assert 15 < ms < 2000


def test_span_reads_the_clock_at_enter_and_exit():
    ticks = iter([10.0, 10.25])
    with clocks.CpuSpan(lambda: next(ticks)) as span:
        pass
    assert span.seconds == 0.25 and span.ms == 250.0


def test_unknown_cpu_clock_is_an_error():
    with pytest.raises(ValueError, match="unknown CPU clock 'thread_time'"):
        clocks.CpuClock("thread_time")


def test_device_clock_picks_by_device():
    assert isinstance(clocks.device_clock("cpu"), clocks.CpuClock)
    assert clocks.device_clock("cpu", cpu=clocks.PROCESS_TIME).name == "process_time"
    cuda = clocks.device_clock("cuda:1", synchronize=True)  # no CUDA call until a span
    assert isinstance(cuda, clocks.CudaClock) and cuda.name == "cuda_events"
    assert cuda.device == "cuda:1" and cuda.synchronize


# ----------------------------------------------------------------------------- CUDA, faked


@pytest.mark.parametrize("synchronize", [True, False])
def test_cuda_span_records_events_around_the_work(fake_cuda_events, synchronize):
    clock = clocks.CudaClock("cuda:0", synchronize=synchronize)
    with clock.span() as span:
        fake_cuda_events.append("work")
    assert fake_cuda_events == ["sync"] * synchronize + ["record", "work", "record"]
    assert span.ms == 2.5 * 2 and fake_cuda_events[-1] == "event_sync"  # read: waits for the end
    assert span.seconds == pytest.approx(2.5 * 2 / 1e3)


def test_cuda_spans_are_read_after_the_work(fake_cuda_events):
    clock = clocks.CudaClock()
    spans = []
    for _ in range(3):
        with clock.span() as span:
            fake_cuda_events.append("work")
        spans.append(span)
    assert "event_sync" not in fake_cuda_events  # nothing waited for while the work was queued
    assert [s.ms for s in spans] == [5.0, 5.0, 5.0]


# ----------------------------------------------------------------------------- CUDA, real


@pytest.mark.cuda
@pytest.mark.parametrize("synchronize", [True, False])
def test_cuda_clock_times_device_work(synchronize):
    clock = clocks.device_clock("cuda", synchronize=synchronize)
    a = torch.randn(2048, 2048, device="cuda")
    torch.mm(a, a)
    with clock.span() as one:
        torch.mm(a, a)
    with clock.span() as ten:
        for _ in range(10):
            torch.mm(a, a)
    assert 0 < one.ms < ten.ms and ten.seconds == pytest.approx(ten.ms / 1e3)


@pytest.mark.cuda
def test_cuda_span_on_an_idle_device_counts_the_host_time_between_launches():
    a = torch.randn(256, 256, device="cuda")
    with clocks.CudaClock("cuda", synchronize=True).span() as span:
        time.sleep(0.05)  # the device idles while the host is away
        torch.mm(a, a)
    assert span.ms > 45


@pytest.mark.cuda
def test_gate_worker_times_cuda_calls():
    a = torch.randn(1024, 1024, device="cuda")
    name, time_calls = worker.timer("cuda")
    assert name == worker.CUDA_CLOCK and time_calls(lambda: torch.mm(a, a), 5) > 0


# ----------------------------------------------------------------------------- the users


def test_measurement_calibration_and_gate_get_their_clock_from_clocks():
    assert isinstance(timing.make_clock("cpu"), clocks.CpuClock)
    assert timing.make_clock("cpu").name == timing.Timing([1.0]).clock == "perf_counter"
    assert timing.make_clock("cuda:0").synchronize  # measurement waits for queued work
    assert calibrate.Timer("cpu", "process").clock.name == "process_time"
    assert calibrate.OpTimer("cpu", "wall").clock.name == "perf_counter"
    assert not calibrate.Timer("cuda", "wall").clock.synchronize
    # the worker loads the very file by its path (it imports nothing from dimbench)
    assert Path(worker.clocks.__file__).resolve() == CLOCKS_FILE
    assert worker.timer("cpu")[0] == worker.CPU_CLOCK == clocks.PROCESS_TIME
    assert not worker.clocks.device_clock("cuda", cpu=worker.clocks.PROCESS_TIME).synchronize


def _names_dimbench(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "dimbench" for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dimbench"


def test_clocks_and_the_worker_import_nothing_from_dimbench():
    clocks_tree = ast.parse(CLOCKS_FILE.read_text())
    assert not any(_names_dimbench(n) for n in ast.walk(clocks_tree))
    # the worker's one `import dimbench` is import_side's: the side's package, to say where it is
    worker_tree = ast.parse(Path(worker.__file__).read_text())
    found = [n for n in ast.walk(worker_tree) if _names_dimbench(n)]
    side = next(f for f in worker_tree.body if getattr(f, "name", None) == "import_side")
    assert len(found) == 1 and found[0] in list(ast.walk(side))


def test_no_clock_code_outside_clocks():
    """No CUDA events, event timings or process-time reads anywhere in the package or the tools
    but in clocks.py; the GPU runbook times through measure.timing."""
    files = [*(ROOT / "dimbench").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    found = []
    for path in files:
        if path.resolve() == CLOCKS_FILE:
            continue
        text = path.read_text()
        for needle in ("cuda.Event", "elapsed_time(", "process_time()"):
            if needle in text:
                found.append(f"{path.relative_to(ROOT)}: {needle}")
    assert found == []
    gpu_check = (ROOT / "tools" / "gpu_check.py").read_text()
    assert "from dimbench.measure.timing import make_clock, time_fn" in gpu_check
