"""Errors that the CLI turns into one line on stderr and exit code 2."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2, never a traceback."""
