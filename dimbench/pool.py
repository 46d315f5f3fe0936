"""Many workers on one machine: ``--devices cuda:0 cuda:1`` (or ``all``) gives one slot per GPU,
``--workers N`` on a CPU one slot per disjoint set of cores. ``run_units`` runs units of work
(a configuration, a cell of paired models) on the slots, one unit per slot at a time, over
``concurrent.futures``: a thread per slot waits on the unit's worker process.

A slot reaches its worker process through the environment (``Slot.env``): ``DIMBENCH_CPUS`` (the
worker pins itself with ``pin_from_env``) and ``CUDA_VISIBLE_DEVICES`` (the worker's ``cuda`` is
the slot's GPU, so a configuration and its row read exactly as on a single-device run).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from dimbench.errors import UsageError

CPUS_ENV = "DIMBENCH_CPUS"
ALL = "all"

U = TypeVar("U")
R = TypeVar("R")


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: a device (``cpu``, ``cuda``, ``cuda:1``), the cores it is pinned
    to (empty: not pinned) and its torch threads (None: torch's default)."""

    device: str
    cpus: tuple[int, ...] = ()
    threads: int | None = None

    def env(self) -> dict[str, str]:
        """The environment of a worker process on this slot."""
        env = {}
        if self.cpus:
            env[CPUS_ENV] = ",".join(map(str, self.cpus))
        if self.device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = _physical_gpu(int(self.device.partition(":")[2]))
        return env

    def label(self) -> str:
        """What a row's ``slot`` column says: ``cuda:1``, ``cpus 0-3``, ``cpus 0,2``."""
        parts = [self.device] if self.device.startswith("cuda:") else []
        if self.cpus:
            parts.append(f"cpus {_span(self.cpus)}")
        return " ".join(parts)


def _physical_gpu(index: int) -> str:
    """The GPU ``cuda:index`` of this process is, as a child's CUDA_VISIBLE_DEVICES entry (a
    SLURM allocation or the user may already have narrowed this process's list)."""
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index].strip() if index < len(visible) else str(index)


def _span(cpus: Sequence[int]) -> str:
    if list(cpus) == list(range(cpus[0], cpus[0] + len(cpus))) and len(cpus) > 1:
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def placement(device: str, devices: list[str] | str | None, workers: int = 1) -> list[Slot]:
    """The slots of a run on ``device`` (already resolved: cpu, cuda, cuda:N): one per GPU of
    ``devices`` (names, or ``"all"``: every GPU torch sees), or ``workers`` disjoint sets of
    this process's cores on a CPU. No devices and one worker: one unpinned slot, as before."""
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if devices:
        if workers != 1:
            raise UsageError("--workers splits a CPU's cores; with --devices, one worker per GPU")
        gpus = _gpus(devices)
        if device != "cuda":
            raise UsageError(
                f"--devices names the GPUs; --device {device} contradicts it (leave it auto or "
                "cuda)"
            )
        return [Slot(d) for d in gpus]
    if workers == 1:
        return [Slot(device)]
    if device != "cpu":
        raise UsageError("--workers N is for a CPU; on GPUs name them with --devices")
    cores = sorted(os.sched_getaffinity(0))
    if workers > len(cores):
        raise UsageError(
            f"--workers {workers}: this process may use {len(cores)} core"
            f"{'s' * (len(cores) > 1)} ({_span(cores)}); at most one worker per core"
        )
    size, extra = divmod(len(cores), workers)
    slots, start = [], 0
    for i in range(workers):  # the first `extra` sets get one core more
        n = size + (i < extra)
        slots.append(Slot("cpu", tuple(cores[start : start + n]), threads=n))
        start += n
    return slots


def _gpus(devices: list[str] | str) -> list[str]:
    import torch

    from dimbench.devices import parse_device

    names = [devices] if isinstance(devices, str) else list(devices)
    if names == [ALL]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UsageError("--devices all: torch sees no CUDA device on this machine")
        return [f"cuda:{i}" for i in range(count)]
    out = []
    for name in names:
        d = parse_device(name, option="--devices")
        if d == "cpu":
            raise UsageError("--devices lists GPUs (cuda:N or all); for CPU cores use --workers")
        out.append("cuda:0" if d == "cuda" else d)
    twice = sorted({d for d in out if out.count(d) > 1})
    if twice:
        raise UsageError(f"--devices names {', '.join(twice)} twice; one worker per GPU")
    return out


def pin_from_env() -> tuple[int, ...]:
    """In a worker process: pin this process to the cores ``DIMBENCH_CPUS`` lists (and the
    threads it starts later, which inherit the mask); returns them (empty: not pinned)."""
    text = os.environ.get(CPUS_ENV, "").strip()
    if not text:
        return ()
    cpus = tuple(int(c) for c in text.split(","))
    os.sched_setaffinity(0, cpus)
    return cpus


class _NotStarted(Exception):
    """A unit dropped because another one ended in an exception."""


def run_units(
    units: Iterable[U],
    slots: Sequence[Slot],
    run_one: Callable[[U, Slot], R],
    on_done: Callable[[U, R], None],
    stop: threading.Event | None = None,
) -> None:
    """Run every unit on a free slot, never two at once on one slot; ``on_done`` gets each
    result in this (the calling) thread as it comes. On Ctrl-C (KeyboardInterrupt here) the
    units not started are dropped, ``stop`` is set so that ``run_one`` ends the running ones
    (killing their processes), and the interrupt goes on once they have returned."""
    if not slots:
        raise ValueError("run_units needs at least one slot")
    stop = stop or threading.Event()
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for s in slots:
        free.put(s)

    def on_slot(unit: U) -> R:
        slot = free.get()  # as many threads as slots: one is always free here
        try:
            if stop.is_set():  # another unit was interrupted: start nothing more
                raise _NotStarted
            return run_one(unit, slot)
        except BaseException:
            stop.set()
            raise
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="dimbench-slot")
    try:
        futures: dict[Future, U] = {pool.submit(on_slot, u): u for u in units}
        order = {f: i for i, f in enumerate(futures)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            finished = sorted(finished, key=order.__getitem__)
            # what finished is kept before a unit's exception (an interrupt) goes on
            for f in finished:
                if f.exception() is None:
                    on_done(futures[f], f.result())
            for f in finished:
                if f.exception() is not None and not isinstance(f.exception(), _NotStarted):
                    raise f.exception()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
