"""The local pool: slots from --devices / --workers (checked, one-line errors), units never two
on one slot, Ctrl-C stops it, workers pinned to their cores, and a --workers 2 sweep that
writes the rows a --workers 1 sweep does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dimbench.errors import UsageError
from dimbench.pool import CPUS_ENV, Slot, placement, run_units
from dimbench.results import load_results, row_key
from tests.test_cli import cli, one_line_error

ROOT = Path(__file__).resolve().parents[1]


def test_workers_split_the_cores_into_disjoint_sets(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5})
    slots = placement("cpu", None, workers=2)
    assert [s.cpus for s in slots] == [(0, 1, 2), (3, 5)]
    assert [s.threads for s in slots] == [3, 2]
    assert [s.label() for s in slots] == ["cpus 0-2", "cpus 3,5"]
    assert slots[1].env() == {CPUS_ENV: "3,5"}
    assert placement("cpu", None, workers=1) == [Slot("cpu")]  # as before: not pinned


@pytest.mark.parametrize(
    "device, devices, workers, message",
    [
        ("cpu", None, 9, "--workers 9: this process may use 2 cores (0-1)"),
        ("cpu", None, 0, "--workers must be >= 1"),
        ("cuda", None, 2, "--workers N is for a CPU"),
        ("cpu", ["cuda:0"], 2, "with --devices, one worker per GPU"),
        ("cpu", ["cpu"], 1, "--devices lists GPUs (cuda:N or all)"),
        ("cpu", ["gpu7"], 1, "--devices 'gpu7': not a device"),
    ],
)
def test_bad_placements_are_one_line_errors(monkeypatch, device, devices, workers, message):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(UsageError) as e:
        placement(device, devices, workers)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_devices_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # e.g. a SLURM allocation
    slots = placement("cuda", "all")
    assert [s.device for s in slots] == ["cuda:0", "cuda:1", "cuda:2"]
    assert slots[1].env() == {"CUDA_VISIBLE_DEVICES": "6"} and slots[1].label() == "cuda:1"
    assert [s.device for s in placement("cuda", ["cuda", "cuda:2"])] == ["cuda:0", "cuda:2"]
    with pytest.raises(UsageError, match="names cuda:1 twice"):
        placement("cuda", ["cuda:1", "cuda:1"])
    with pytest.raises(UsageError, match="no such CUDA device"):
        placement("cuda", ["cuda:3"])
    with pytest.raises(UsageError, match="--device cuda:1 contradicts it"):
        placement("cuda:1", ["cuda:0"])


def test_devices_all_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="torch sees no CUDA device"):
        placement("cuda", "all")


def test_run_units_never_puts_two_units_on_one_slot():
    slots = [Slot("cpu", (i,), 1) for i in range(3)]
    busy: set[Slot] = set()
    lock = threading.Lock()
    most = [0]
    clashes: list[Slot] = []
    done: list[tuple[int, str]] = []

    def run_one(unit: int, slot: Slot) -> str:
        with lock:
            if slot in busy:
                clashes.append(slot)
            busy.add(slot)
            most[0] = max(most[0], len(busy))
        time.sleep(0.02 * (unit % 3 + 1))
        with lock:
            busy.discard(slot)
        return slot.label()

    def on_done(unit: int, label: str) -> None:
        assert threading.current_thread() is threading.main_thread()
        done.append((unit, label))

    run_units(range(12), slots, run_one, on_done)
    assert not clashes and most[0] == 3  # every slot used, none twice at once
    assert sorted(u for u, _ in done) == list(range(12))


def test_run_units_stops_on_ctrl_c():
    """The interrupt drops the units not started and sets ``stop`` for the running ones."""
    started: list[int] = []
    stop = threading.Event()

    def run_one(unit: int, slot: Slot) -> int:
        started.append(unit)
        if unit == 0:
            return unit
        stop.wait(5)  # a running unit: ends when told to
        assert stop.is_set()
        return unit

    def on_done(unit: int, result: int) -> None:
        raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_units(range(20), [Slot("cpu"), Slot("cpu")], run_one, on_done, stop)
    assert stop.is_set() and time.perf_counter() - t0 < 4
    assert len(started) <= 3  # the other 17 never started


def test_a_worker_pins_itself_to_its_slot():
    core = min(os.sched_getaffinity(0))
    code = (
        "import os; from dimbench.pool import pin_from_env; "
        "print(pin_from_env(), sorted(os.sched_getaffinity(0)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), CPUS_ENV: str(core)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [f"({core},)", f"[{core}]"]


def test_run_rejects_bad_placement_in_one_line(tmp_path, capsys):
    args = ["run", "throughput", "--models", "DiT-T/2", "--res", "32", "--out", str(tmp_path)]
    assert cli([*args, "--workers", str(len(os.sched_getaffinity(0)) + 1)]) == 2
    assert "at most one worker per core" in one_line_error(capsys)
    assert cli([*args, "--dry-run"]) == 2
    assert "add --launcher" in one_line_error(capsys)
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_two_workers_write_the_rows_one_does(tmp_path):
    """DiT-T/2 and U-ViT-T/2 at 32 px, two batch sizes, 2 repeats: the same keys and statuses,
    each paired cell of the pool measured on its own cores (its workers pinned) with as many
    threads."""
    args = ["run", "throughput", "--models", "DiT-T/2", "U-ViT-T/2", "--res", "32"]
    args += ["--batch-size", "1", "2"]
    args += ["--repeats", "2", "--warmup", "1", "--no-memory-check"]
    assert cli([*args, "--workers", "1", "--out", str(tmp_path / "one")]) == 0
    assert cli([*args, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (load_results(tmp_path / d) for d in ("one", "two"))
    assert sorted(map(row_key, one.to_dict("records"))) == sorted(
        map(row_key, two.to_dict("records"))
    )
    assert set(one["status"]) == set(two["status"]) == {"ok"}
    assert set(two["paired"]) == {True}
    assert one["slot"].isna().all()  # one worker: the whole device, as before
    slots = list(two["slot"])
    assert all(s.startswith("cpus ") for s in slots)
    assert [_cores(s) for s in slots] == list(two["threads"])


def _cores(label: str) -> int:
    """How many cores ``cpus 0-3,6`` names."""
    n = 0
    for part in label.removeprefix("cpus ").split(","):
        first, _, last = part.partition("-")
        n += int(last or first) - int(first) + 1
    return n


def test_run_units_keeps_what_finished_before_an_interrupt():
    """A unit that ends in KeyboardInterrupt (an in-process measurement hit by Ctrl-C) goes on
    as the interrupt, after the units that finished are kept, in their order."""
    done: list[int] = []

    def run_one(unit: int, slot: Slot) -> int:
        if unit == 2:
            raise KeyboardInterrupt
        return unit

    with pytest.raises(KeyboardInterrupt):
        run_units(range(5), [Slot("cpu")], run_one, lambda u, r: done.append(u))
    assert done == [0, 1]
