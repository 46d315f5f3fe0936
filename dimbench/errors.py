"""Errors that the CLI turns into one line on stderr and exit code 2."""

from __future__ import annotations


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
