"""Long-lived worker processes driven over pipes: JSON lines, one request on the worker's
stdin, one reply on its stdout. The speed gate's sides (``regress/sides.py``) and the paired
cells of ``dimbench run`` (``bench/cell.py``) are both built on it.

Parent side, ``PipeWorker``: starts the process (its stderr to a log file whose tail explains a
failure), sends requests, reads replies, optionally with a deadline (``WorkerTimeout``: the
process is killed), and closes it. A reply ``{"error": ...}``, a closed pipe or an exit is a
``WorkerError``.

Worker side, ``reply_channel`` and ``serve``: the replies go to a copy of the stdout the process
was started with and fd 1 is pointed at stderr, so a print of the measured code cannot corrupt a
reply; ``serve`` answers requests ``{"op": NAME, ...}`` with ``handlers[NAME](request)`` until
``{"op": "exit"}`` or end of input, an exception becoming an ``{"error": ...}`` reply.

This module imports nothing from ``dimbench``: the gate's worker loads it by its path from the
head's tree (as it loads ``clocks.py``) while the side's own ``dimbench`` is on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

LOG_TAIL_LINES = 12


class WorkerError(RuntimeError):
    """A worker failed: it exited, its pipe closed, or a request raised in it."""


class WorkerTimeout(WorkerError):
    """A worker did not reply within the deadline (it has been killed)."""


class PipeWorker:
    """One worker process; ``describe`` names it in errors."""

    def __init__(self, log_path: Path, describe: str, new_session: bool = True) -> None:
        self.log_path, self.describe = Path(log_path), describe
        # its own process group (a kill takes all of it, Ctrl-C reaches only the parent)
        self.new_session = new_session
        self.proc: subprocess.Popen | None = None

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=cwd,
                env=dict(env),
                text=True,
                bufsize=1,
                start_new_session=self.new_session,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, doc: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(doc) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self.failure("exited") from None

    def receive(self, timeout_s: float | None = None) -> dict:
        """The next reply; ``WorkerTimeout`` (and the process killed) after ``timeout_s``."""
        assert self.proc is not None and self.proc.stdout is not None
        if timeout_s is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
            if not ready:
                self.kill()
                raise WorkerTimeout(f"{self.describe}: no reply after {timeout_s:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise self.failure(f"exited with code {self.proc.returncode}")
        doc = json.loads(line)
        if "error" in doc:
            raise self.failure(doc["error"])
        return doc

    def request(self, doc: dict, timeout_s: float | None = None) -> dict:
        self.send(doc)
        return self.receive(timeout_s)

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Ask it to leave (killed after 10 s); never leaves a process behind."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if self.proc.poll() is None:
                self.send({"op": "exit"})
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return []

    def failure(self, what: str) -> WorkerError:
        tail = self.log_tail()
        log = ("\n  " + "\n  ".join(tail)) if tail else ""
        return WorkerError(f"{self.describe}: {what}{log}")


# ---------------------------------------------------------------------- in the worker


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def reply_channel() -> Callable[[dict], None]:
    """``reply(doc)`` writing to the stdout this process was started with; from here on fd 1
    (print, C extensions) goes to stderr."""
    replies: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(doc: dict) -> None:
        replies.write(json.dumps(doc, default=str) + "\n")

    return reply


def serve(
    requests: Iterable[str],
    reply: Callable[[dict], None],
    handlers: Mapping[str, Callable[[dict], dict]],
) -> None:
    """Answer ``requests`` (JSON lines) with ``handlers[op](request)`` until ``exit``."""
    for line in requests:
        if not line.strip():
            continue
        msg = json.loads(line)
        op = msg.get("op")
        if op == "exit":
            return
        try:
            handler = handlers.get(op)
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            reply(handler(msg))
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            reply({"error": one_line(e)})
