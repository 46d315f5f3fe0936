"""Output destinations, checked before any work starts: a folder or file that cannot be written
is a one-line error (exit 2), never a traceback after minutes of measuring."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dimbench.errors import UsageError


def writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Check that folder ``path`` can be created (if missing) and written to, by doing it: the
    folders this creates are removed again, so a check that fails later leaves nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a folder; choose another {option}")
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UsageError(
            f"{option} {path}: cannot write there ({reason}); choose another {option}"
        ) from None
    finally:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
    return path


def writable_file(path: str | Path, option: str) -> Path:
    """Check that file ``path`` can be written (its folder is created if needed)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    writable_dir(path.parent, option)
    return path
