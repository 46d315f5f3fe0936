"""Errors that the CLI turns into one line on stderr (exit 2), and interruptions (130 / 143)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, never a traceback."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during a long job, after the job saved what it had: the CLI prints the
    message and exits with ``exit_code`` (130 for SIGINT, 143 for SIGTERM, as shells do)."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, or for another model or resolution."""


class Received:
    """Which signal ended a job under :func:`terminate_as_interrupt` (SIGINT unless SIGTERM)."""

    signum: int = signal.SIGINT


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[Received]:
    """SIGTERM (a CI timeout, ``kill``) raises KeyboardInterrupt in the block as Ctrl-C does, so
    its cleanup runs (workers killed, temporary worktrees removed); the yielded object says
    which signal it was. Outside the main thread, where no handler can be set, it does nothing."""
    received = Received()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
