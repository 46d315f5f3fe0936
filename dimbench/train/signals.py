"""Ctrl-C and SIGTERM during training: finish the step, save, then stop."""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """SIGINT/SIGTERM while training: remember the signal so the loop saves a checkpoint after
    the current step and stops; a second signal stops at once, without saving."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
            "(again to stop without saving)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
