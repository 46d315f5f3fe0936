"""The result store with many writers: processes appending at once (a pool's, a job array's)
leave every row whole and once, and each sees what the others finished."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from dimbench.results import ResultStore, Schema, read_result_csv, row_key

ROOT = Path(__file__).resolve().parents[1]
WRITERS, ROWS_EACH, OLD_ROWS = 4, 15, 1000
# a suite of its own: the writers import dimbench.results only (no torch), so they start fast
# and their appends overlap
SCHEMA = Schema("toy", {"score": "a number"})
KEY = dict(suite="toy", model="M", batch_size=1, device="cpu", dtype="fp32", mode="forward")
# a writer: waits for the go file, then appends its rows as fast as it can (long error texts:
# an unlocked write has room to be split)
WRITER = """
import sys, time
from pathlib import Path
from dimbench.results import ResultStore
from tests.test_store_writers import KEY, SCHEMA
out, who, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
while not (out / "go").exists():
    time.sleep(0.005)
store = ResultStore(out, SCHEMA)
for i in range(n):
    row = SCHEMA.row(**KEY, image_size=1000 * who + i, status="error", error="x" * 3000)
    store.append(row, raw={"latency_ms": [float(i)] * 200})
"""


def _row(size: int, **fields) -> dict:
    return SCHEMA.row(**KEY, image_size=size, status="ok", **fields)


def test_concurrent_appends_are_whole_and_once(tmp_path):
    """From a long CSV in an older layout (no slot column), which the first append rewrites:
    unlocked, writers that read it at once each rewrite their own copy and lose rows."""
    header = [c for c in SCHEMA.columns if c != "slot"]
    old = [_row(100_000 + i) for i in range(OLD_ROWS)]
    lines = [",".join(header)] + [",".join(str(r[c] or "") for c in header) for r in old]
    (tmp_path / "toy.csv").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(ROWS_EACH)],
                         env=env, cwd=ROOT)
        for w in range(WRITERS)
    ]  # fmt: skip
    try:
        (tmp_path / "go").touch()
        assert all(p.wait(timeout=120) == 0 for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    contents = read_result_csv(tmp_path / "toy.csv")  # raises on a malformed row
    assert not contents.partial_tail and "slot" in contents.header
    sizes = sorted(int(r["image_size"]) for r in contents.rows)
    new = [1000 * w + i for w in range(WRITERS) for i in range(ROWS_EACH)]
    assert sizes == sorted(new + [100_000 + i for i in range(OLD_ROWS)])
    assert all(r["error"] == "x" * 3000 for r in contents.rows if int(r["image_size"]) < 100_000)
    samples = (tmp_path / "toy.samples.jsonl").read_text().splitlines()
    assert len(samples) == WRITERS * ROWS_EACH  # one whole JSON line per row
    # a rerun by any of them skips what every writer finished (with --skip-failed: errors too)
    done = ResultStore(tmp_path, SCHEMA).done_keys(retry_failed=False)
    assert row_key({**KEY, "image_size": 3000 + ROWS_EACH - 1}) in done
    assert len(done) == WRITERS * ROWS_EACH + OLD_ROWS


def test_appends_wait_for_the_lock(tmp_path):
    """A row written while another writer holds the lock lands after it lets go."""
    store = ResultStore(tmp_path, SCHEMA)
    store.append(_row(256))
    landed = threading.Event()

    def append_other() -> None:
        ResultStore(tmp_path, SCHEMA).append(_row(512))
        landed.set()

    with store.locked():
        writer = threading.Thread(target=append_other)
        writer.start()
        assert not landed.wait(0.3)  # held here: the other append waits
        assert len(read_result_csv(store.csv_path).rows) == 1  # read past the lock
    writer.join(timeout=10)
    assert landed.is_set() and len(store.rows()) == 2
