"""How a measuring process that left no result ended: classified from its exit status and the
last line of its stderr (shared by one-shot workers and a paired cell's workers)."""

from __future__ import annotations

import signal
from pathlib import Path

STDERR_TAIL = 4000  # bytes of a dead worker's stderr kept to explain it


def last_line(path: Path) -> str:
    try:
        data = path.read_bytes()[-STDERR_TAIL:].decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def stderr_tail(path: Path) -> str:
    try:
        return path.read_bytes()[-STDERR_TAIL:].decode(errors="replace")
    except OSError:
        return ""


def classify_death(returncode: int, last: str) -> tuple[str, str]:
    """(status, error) of a worker that exited without a result: SIGKILL from outside is almost
    always the kernel's OOM killer; anything else is a crash."""
    if returncode == -signal.SIGKILL:
        return "oom", "killed by SIGKILL (the kernel's OOM killer, most likely)"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return "error", f"worker died of {name}" + (f": {last}" if last else "")
    return "error", f"worker exited with code {returncode}" + (f": {last}" if last else "")
