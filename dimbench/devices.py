"""The one parser of ``--device`` for every command: ``cpu``, ``cuda``, ``cuda:N`` and, where a
command allows it, ``auto`` (the GPU when there is one). Bad input is a one-line UsageError."""

from __future__ import annotations

import re

from dimbench.errors import UsageError

DEVICE_FORMS = "cpu, cuda or cuda:N"
# every command's --device unless given: the GPU where torch sees one, else the CPU (results
# and runs record the device it resolved to)
DEFAULT_DEVICE = "auto"


def parse_device(text: str, *, allow_auto: bool = False, option: str = "--device") -> str:
    """The device ``text`` names, checked against this machine; ``auto`` -> cuda or cpu.

    Returns the canonical string (``cpu``, ``cuda``, ``cuda:1``): the form results record.
    CUDA is queried only when asked for, so the CPU path never initialises it.
    """
    name = text.strip().lower()
    forms = ("auto, " if allow_auto else "") + DEVICE_FORMS
    if name == "auto" and allow_auto:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"{option} {text!r}: not a device; valid: {forms}")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{option} {text}: CUDA is not available on this machine")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"{option} {text}: no such CUDA device; this machine has "
                f"{torch.cuda.device_count()}"
            )
    return name
