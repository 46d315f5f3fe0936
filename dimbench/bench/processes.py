"""The measuring processes, one-shot workers and a paired cell's workers alike: the environment
they start in, and how one that left no result ended (classified from its exit status and the
last line of its stderr)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dimbench.bench.spec import Config, Suite

STDERR_TAIL = 4000  # bytes of a dead worker's stderr kept to explain it


def worker_environment(
    cfg: Config, suite: Suite | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment with ``cfg``'s OpenMP wait policy (read once, when the OpenMP
    runtime starts), the suite's variables for ``cfg`` and ``extra`` (a pool slot's)."""
    env = dict(os.environ)
    if cfg.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = cfg.omp_wait_policy.upper()
    if suite is not None:
        env.update(suite.worker_env(cfg))
    env.update(extra or {})
    return env


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
