"""One writer per output folder: ``OutLock(out_dir)`` holds ``OUT/.dimbench.lock`` for the life
of a command that writes results there, so a second command on the same ``--out`` stops with a
one-line error (exit 2) naming the first one, before it measures anything.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on an open descriptor, so the kernel releases it when
its process ends however it ends; the file holds the holder's pid, host and command for the
error message. A file that is still there but not locked was left by a killed run: it is taken
over, saying so on stderr. On release the file is removed (and the folder, if the lock created
it and nothing else was written), so a finished run leaves no trace in a tracked folder.

The lock belongs to one command invocation, not to each row: worker processes a command starts
append to the store under their parent's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from dimbench.errors import UsageError

LOCK_NAME = ".dimbench.lock"


def this_command() -> str:
    """The command line of this process, as a user would type it."""
    args = sys.argv[1:]
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("__main__.py", "dimbench"):
        prog = "dimbench"
    return shlex.join([prog, *args])


class OutLock:
    """Exclusive lock on the folder ``out_dir`` (see the module docstring); a context manager."""

    def __init__(self, out_dir: str | Path, option: str = "--out", command: str | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.option = option
        self.command = command or this_command()
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self._created = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                self._remove_created()
                raise UsageError(
                    f"{self.option} {self.out_dir} is in use by pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} ({holder.get('command', '?')}); wait for it to "
                    f"finish or choose another {self.option}"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and flock: again
        left = _read(fd)
        if left:
            print(
                f"dimbench: taking over the lock on {self.out_dir} left by pid "
                f"{left.get('pid', '?')} on {left.get('host', '?')} ({left.get('command', '?')}), "
                "which is no longer running",
                file=sys.stderr,
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one can be mid-take-over
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:  # deepest first; stops at the first that is not empty
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?", "command": "unreadable lock file"}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
