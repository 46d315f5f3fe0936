"""A gate worker: one side's ``dimbench``, its cases set up once, timed batch by batch on request.

A worker process imports ``dimbench`` from its side's source tree, never from the installed
package: ``dimbench.regress.sides`` starts ``python -c BOOTSTRAP`` in an empty folder, which loads
this file by its path and calls ``main``. ``import_side`` then puts the tree first on
``sys.path``: everything dimbench installs lives under the tree's ``dimbench/`` (a base revision
from before that layout gets links to its top-level ``suites/`` and ``baselines/`` when it is
checked out, see ``worktree.checkout``). This file therefore imports nothing from ``dimbench``
itself; the cases file it is given (the head's ``cases.py``) and the clocks (the head's
``measure/clocks.py``) are loaded by path as well.

Protocol: JSON lines, requests on stdin, replies on the stdout the worker was started with; the
code under test writes to stderr (fd 1 is pointed there), so a print cannot corrupt a reply
(``dimbench/measure/pipes.py``, loaded by its path like the clocks; ``dimbench run``'s paired
cells drive their workers with the same code).
The worker first replies ``{"info": ...}`` (where its ``dimbench`` came from), then answers
``{"op": "setup", ...}`` with the cases it could build and ``{"op": "time", "names": [...]}``
with one sample per name, and leaves on ``{"op": "exit"}`` or end of input.

Clock: on the CPU the process's CPU time (``time.process_time``), with torch pinned to one
thread. On a shared machine the wall clock also counts the time other processes hold the core;
CPU time counts only this process's work, so only the second-order effects of sharing (caches,
memory bandwidth) remain, and the calibration kernels see those too. On CUDA, CUDA events
around the ``repeat`` calls. Both come from ``dimbench/measure/clocks.py``, which this file loads
by its path from its own tree (the head's), as it loads the cases: both sides are timed by the
same clock code, whatever their ``dimbench`` holds.

torch is imported by the cases that need it (all of the gate's do), not by the worker itself.

Heap: glibc returns large freed blocks to the kernel (``mmap``/trim) and takes them back with a
page fault per 4 KiB page on the next allocation. On a busy machine those faults cost 1x to 6x a
small kernel's own time, and vary from run to run. ``keep_heap`` tells malloc to keep its memory,
as a long-running training process effectively does, so the samples time the kernels.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

# the clocks as gate settings and stored baselines name them (compared between runs)
CPU_CLOCK = "process_time"
CUDA_CLOCK = "cuda-events"

Timer = Callable[[Callable[[], object], int], float]  # (fn, repeat) -> seconds per call
CLOCKS_MODULE = "dimbench_gate_clocks"
PIPES_MODULE = "dimbench_gate_pipes"


# ---------------------------------------------------------------------- importing a side


def import_side(root: Path) -> dict:
    """Import ``dimbench`` from the source tree ``root``; return where it came from."""
    root = root.resolve()
    cwd = os.getcwd()
    sys.path[:] = [str(root)] + [p for p in sys.path if p not in ("", cwd)]
    import dimbench

    where = Path(dimbench.__file__).resolve()
    if root not in where.parents:
        raise ImportError(f"dimbench was imported from {where}, not from the side's tree {root}")
    return {
        "root": str(root),
        "dimbench_file": str(where),
        "dimbench_version": getattr(dimbench, "__version__", ""),
        "python": sys.version.split()[0],
        "pid": os.getpid(),
    }


def load_module(path: Path, name: str) -> ModuleType:
    """Load the Python file ``path`` as the top-level module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def loaded_kernels() -> list[str]:
    """Shared libraries this process mapped from dimbench's kernel cache (the compiled C++ scan):
    shows that each side runs the kernel built from its own source."""
    cache = os.environ.get("DIMBENCH_CACHE_DIR") or str(Path.home() / ".cache" / "dimbench")
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split(maxsplit=5)[-1] for line in maps if line.count(" ") >= 5}
    return sorted(p for p in paths if p.startswith(cache) and p.endswith(".so"))


# ---------------------------------------------------------------------- timing

# by their paths, from the tree this file is in (the head's), like the cases: see the docstring
_MEASURE = Path(__file__).resolve().parents[1] / "measure"
clocks = load_module(_MEASURE / "clocks.py", CLOCKS_MODULE)
pipes = load_module(_MEASURE / "pipes.py", PIPES_MODULE)
one_line = pipes.one_line

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's cap on 64-bit systems


@functools.cache
def keep_heap() -> bool:
    """Stop glibc malloc from returning freed memory to the kernel (see the module docstring);
    False where there is no glibc (the heap behaves as before)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and ok


def timer(device: str) -> tuple[str, Timer]:
    """(clock name, time(fn, repeat) -> seconds per call) for ``device``: the ``repeat`` calls
    bracketed by one span of the clocks module's process-time or CUDA-event clock."""
    clock = clocks.device_clock(device, cpu=clocks.PROCESS_TIME)

    def time_calls(fn: Callable[[], object], repeat: int) -> float:
        with clock.span() as span:
            for _ in range(repeat):
                fn()
        return span.seconds / repeat

    return (CUDA_CLOCK if clocks.is_cuda(device) else CPU_CLOCK), time_calls


class Runner:
    """The cases of one side, set up and warmed up; ``time(names)`` takes one sample of each.

    A case whose set-up or warm-up raises is left out and its error kept in ``errors``: the
    side's library may lack what the case calls (an older base revision). The cases get a
    ``torch.device`` when they imported torch (a plain string otherwise), and torch runs on
    ``threads`` threads."""

    def __init__(self, cases: Sequence, device: str, threads: int = 1, warmup: int = 2) -> None:
        self.device: object = device
        torch = sys.modules.get("torch")
        if torch is not None:
            self.device = torch.device(device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.set_num_threads(threads)
        self.clock, self._time = timer(device)
        self.workloads: dict[str, tuple[Callable[[], object], int]] = {}
        self.errors: dict[str, str] = {}
        for case in cases:
            try:
                fn = case.setup(self.device)
                for _ in range(warmup):  # first-use compiles, allocator and cache warm-up
                    self._time(fn, case.repeat)
            except Exception as e:
                self.errors[case.name] = one_line(e)
                continue
            self.workloads[case.name] = (fn, case.repeat)
        # A full collection walks every object torch made (~0.1 s); frozen, they are skipped,
        # so the collection before each batch costs microseconds.
        gc.collect()
        gc.freeze()

    def time(self, names: Sequence[str]) -> dict[str, float]:
        gc.collect()
        gc.disable()  # a collection inside a sample would charge it to that case
        try:
            return {name: self._time(*self.workloads[name]) for name in names}
        finally:
            gc.enable()


# ---------------------------------------------------------------------- the worker process


def describe(case) -> dict:
    return {"name": case.name, "group": case.group, "signature": case.signature}


def serve(requests, reply: Callable[[dict], None]) -> None:
    """Answer ``requests`` (an iterable of JSON lines) until ``exit`` (``pipes.serve``)."""
    runner: Runner | None = None

    def setup(msg: dict) -> dict:
        nonlocal runner
        module = load_module(Path(msg["cases_file"]), "dimbench_gate_cases")
        benchmarks = list(module.gate_cases(msg["device"]))
        cases = [*benchmarks, *module.CALIBRATION]
        runner = Runner(cases, msg["device"], msg["threads"], msg["warmup"])
        return {
            "cases": [describe(c) for c in benchmarks],
            "calibration": [describe(c) for c in module.CALIBRATION],
            "errors": runner.errors,
            "clock": runner.clock,
            "heap_kept": keep_heap(),
            "torch": getattr(sys.modules.get("torch"), "__version__", ""),
            "kernels": loaded_kernels(),
        }

    def time(msg: dict) -> dict:
        if runner is None:
            raise RuntimeError("time before setup")
        return {"times": runner.time(msg["names"])}

    pipes.serve(requests, reply, {"setup": setup, "time": time})


def main(argv: Sequence[str]) -> None:
    """``argv``: the side's source tree."""
    reply = pipes.reply_channel()  # whatever the code under test prints goes to the log
    keep_heap()
    try:
        info = import_side(Path(argv[0]))
    except Exception as e:
        traceback.print_exc()
        reply({"error": one_line(e)})
        return
    reply({"info": info})
    serve(sys.stdin, reply)
