"""One writer per output folder (``dimbench.out_lock.OutLock``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dimbench.errors import UsageError
from dimbench.out_lock import LOCK_NAME, OutLock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from dimbench.out_lock import OutLock
OutLock(sys.argv[1], command="dimbench run throughput --out X").acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_in_another_process(out: Path) -> subprocess.Popen:
    """A process that holds ``out``'s lock until it is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_names_the_first_holder(tmp_path):
    with OutLock(tmp_path, command="dimbench run throughput --out A"):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["command"].endswith("--out A")
        with pytest.raises(UsageError) as e, OutLock(tmp_path):
            pass
    message = str(e.value)
    assert (
        f"in use by pid {os.getpid()}" in message and "dimbench run throughput --out A" in message
    )
    assert "\n" not in message
    assert not (tmp_path / LOCK_NAME).exists()  # released: no trace left
    with OutLock(tmp_path):  # and free again
        pass


def test_a_lock_of_another_process_is_held_until_it_dies(tmp_path):
    proc = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(UsageError, match=f"pid {proc.pid} "):
            OutLock(tmp_path).acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup runs, the file stays, the kernel drops the flock
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()
    with OutLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_stale_lock_file_is_taken_over_saying_so(tmp_path, capsys):
    stale = {"pid": 999999, "host": "h", "command": "dimbench run memory --out B"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with OutLock(tmp_path):
        pass
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "pid 999999" in err and "run memory --out B" in err


def test_a_folder_the_lock_created_goes_with_it_if_empty(tmp_path):
    out = tmp_path / "new" / "out"
    with OutLock(out):
        assert out.is_dir()
    assert not (tmp_path / "new").exists()
    with OutLock(out):
        (out / "throughput.csv").write_text("x\n")
    assert (out / "throughput.csv").exists() and not (out / LOCK_NAME).exists()
